"""The transformers dialects: ``rope_scaling`` (``type`` or ``rope_type``), ``rope_parameters`` (v5,
nested per layer type), and a top-level ``original_max_position_embeddings`` (Phi-3, airophin PNTK)."""

from __future__ import annotations

from typing import Any

from ropepatch.detectors.common import number, rope_dict
from ropepatch.errors import RopeConfigError, short_repr
from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.view import ConfigView, Finding

# keys of a rope dict that are not method parameters
_COMMON = {"type", "rope_type", "factor", "original_max_position_embeddings", "rope_theta", "partial_rotary_factor"}
_IGNORED = {"mrope_section", "mrope_interleaved"}
# rope types that mean "no scaling"
_PLAIN = {"default", "none", "mrope", "rope", ""}


@hookimpl
def detect_rope(view: ConfigView) -> Finding | None:
    if view.kind == "gguf":
        return None
    rd, key, notes = rope_dict(view)
    top_original = view.get("original_max_position_embeddings")
    if rd is not None:
        return _from_rope_dict(view, rd, key, notes, top_original)
    if top_original is not None:
        return _from_top_level_original(view, top_original)
    return None


def _from_rope_dict(
    view: ConfigView, rd: dict[str, Any], key: str, notes: list[str], top_original: Any
) -> Finding | None:
    w = lambda k: view.where(f"{key}.{k}")  # noqa: E731
    rtype, type_key = rd.get("rope_type"), "rope_type"
    legacy = rd.get("type")
    if rtype is None:
        rtype, type_key = legacy, "type"
    elif legacy is not None and str(legacy) != str(rtype):
        notes.append(f"{key} has type={legacy!r} and rope_type={rtype!r}; rope_type is used, as transformers does")
    if rtype is not None and not isinstance(rtype, str):
        raise RopeConfigError(f"must be a string, got {rtype!r}", path=view.path, key=view.prefix + f"{key}.{type_key}")
    if rtype is None:
        if rd.get("factor") is not None:
            raise RopeConfigError(
                "has a 'factor' but no 'type' or 'rope_type', so the scaling method is unknown; add "
                '"rope_type": "linear" (or yarn, dynamic, ...) or pass method=...',
                path=view.path,
                key=view.prefix + key,
            )
        if top_original is not None:
            return _from_top_level_original(view, top_original)
        return None  # plain rope_parameters (just rope_theta): let the fallback say "default"
    name = rtype.strip().lower().replace("_", "-")
    if name in _PLAIN:
        if top_original is not None and name == "default":
            return _from_top_level_original(view, top_original)
        f = Finding("default", detector="rope_scaling", notes=list(notes))
        f.provenance["method"] = w(type_key)
        if name == "mrope":
            f.notes.append("mrope: multimodal sections, plain frequencies")
        return f
    if name in ("dynamic", "ntk-alpha") and rd.get("alpha") is not None:
        # HunYuan's ntk_alpha and vLLM's DynamicNTKAlpha are fixed NTK-aware alpha, whatever the name says
        notes.append(f"{key}.{type_key}={rtype!r} with 'alpha' is the fixed NTK-aware formula; using 'ntk'")
        name = "ntk"
    f = Finding(name, detector="rope_scaling", notes=list(notes))
    f.provenance["method"] = w(type_key)
    if rd.get("factor") is not None:
        f.set("factor", number(rd["factor"], view, w("factor")), w("factor"))
    if rd.get("original_max_position_embeddings") is not None:
        f.set(
            "original_max_position_embeddings",
            number(rd["original_max_position_embeddings"], view, w("original_max_position_embeddings"), integer=True),
            w("original_max_position_embeddings"),
        )
    elif top_original is not None:
        # Phi-3 keeps it top-level; transformers 5 fails on legacy "su" configs because of that.
        f.set(
            "original_max_position_embeddings",
            number(top_original, view, view.where("original_max_position_embeddings"), integer=True),
            view.where("original_max_position_embeddings"),
        )
    for k, v in rd.items():
        if not isinstance(k, str):  # only a Python dict can hold one; no method parameter is named so
            f.warnings.append(f"{key} has a non-string key {short_repr(k)}; ignored")
            continue
        if k in _COMMON or k in _IGNORED or v is None:
            continue
        f.param(k, v, w(k))
    if name in ("su", "longrope") and isinstance(rd.get("type"), str) and rd.get("type") == "su":
        f.notes.append(
            "legacy Phi-3 'su' is LongRoPE; transformers 5.0-5.24 fail to load it unless ropepatch is enabled"
        )
    _check_factor_contradiction(view, f)
    return f


def _from_top_level_original(view: ConfigView, top_original: Any) -> Finding | None:
    where_o = view.where("original_max_position_embeddings")
    original = number(top_original, view, where_o, integer=True)
    maxpos = view.get("max_position_embeddings")
    if maxpos is None:
        return None
    maxpos = number(maxpos, view, view.where("max_position_embeddings"), integer=True)
    if original <= 0:
        raise RopeConfigError.at(
            f"must be a positive whole number, got {original}",
            field=None,
            where=where_o,
            path=view.path,
            label=view.label,
        )
    if maxpos <= original:
        f = Finding("default", detector="rope_scaling")
        f.set("original_max_position_embeddings", original, where_o)
        return f
    # bhenrym14's PNTK checkpoints: the patched exllama used scale = max // original
    f = Finding("part-ntk", detector="rope_scaling")
    f.provenance["method"] = f"{where_o} without rope_scaling (bhenrym14 partial-NTK convention)"
    f.set("original_max_position_embeddings", original, where_o)
    f.set(
        "factor",
        float(maxpos // original),
        f"{view.where('max_position_embeddings')} // {where_o}",
    )
    f.notes.append(
        "top-level original_max_position_embeddings with no rope_scaling: the 3-way partial NTK of "
        "bhenrym14's airophin/PNTK checkpoints; stock transformers silently ignores it (plain RoPE)"
    )
    return f


def _check_factor_contradiction(view: ConfigView, f: Finding) -> None:
    factor = f.values.get("factor")
    original = f.values.get("original_max_position_embeddings")
    maxpos = view.get("max_position_embeddings")
    if factor is None or original is None or not isinstance(maxpos, (int, float)) or isinstance(maxpos, bool):
        return
    if original <= 0:
        return  # RopeSpec refuses it with the key named; there is no ratio to compare
    # llama3's factor is not a context ratio (Llama 3.2 uses 32 with max/original = 16): no check there
    if f.method not in ("yarn", "longrope", "su", "linear", "dynamic-yarn", "ntk-by-parts"):
        return
    if not isinstance(factor, (int, float)) or original <= 0:
        return  # the spec refuses these with a message naming the key
    ratio = maxpos / original
    if abs(ratio - factor) > 1e-6 * max(1.0, factor) and ratio > 1:
        context = factor * original  # a float: 1e308 x 4096 is inf, which int(round()) cannot take
        f.warnings.append(
            f"factor={factor:g} disagrees with max_position_embeddings/original = {maxpos}/{original} = "
            f"{ratio:g}; factor {factor:g} is used (as transformers >= 4.56 does), so the effective context "
            f"is {context:.0f}"
        )
