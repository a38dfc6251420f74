"""GGUF ``{arch}.rope.*`` metadata (llama.cpp's encoding of the same methods)."""

from __future__ import annotations

from ropepatch.detectors.common import gguf_arch, number
from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.view import ConfigView, Finding
from ropepatch.methods.base import get_mscale

_TYPES = {"none": "default", "linear": "linear", "yarn": "yarn", "longrope": "longrope"}


@hookimpl
def detect_rope(view: ConfigView) -> Finding | None:
    if view.kind != "gguf":
        return None
    arch = gguf_arch(view)
    if arch is None:
        raise RopeConfigError("GGUF metadata has no general.architecture", path=view.path, key="general.architecture")
    k = lambda name: f"{arch}.rope.{name}"  # noqa: E731
    stype = view.get(k("scaling.type"))
    legacy_linear = view.get(k("scale_linear"))
    if stype is None and legacy_linear is not None:
        f = Finding("linear", detector="gguf")
        f.provenance["method"] = view.where(k("scale_linear"))
        f.set("factor", number(legacy_linear, view, k("scale_linear")), view.where(k("scale_linear")))
        return f
    if stype is None:
        return None  # plain: the fallback reports default with the GGUF base
    if not isinstance(stype, str) or stype not in _TYPES:
        raise RopeConfigError(
            f"unknown GGUF rope scaling type {stype!r} (llama.cpp knows none, linear, yarn, longrope)",
            path=view.path,
            key=k("scaling.type"),
        )
    method = _TYPES[stype]
    f = Finding(method, detector="gguf")
    f.provenance["method"] = view.where(k("scaling.type"))
    if method == "default":
        return f
    if view.get(k("scaling.factor")) is not None:
        f.set(
            "factor", number(view.get(k("scaling.factor")), view, k("scaling.factor")), view.where(k("scaling.factor"))
        )
    if view.get(k("scaling.original_context_length")) is not None:
        key = k("scaling.original_context_length")
        f.set("original_max_position_embeddings", number(view.get(key), view, key, integer=True), view.where(key))
    if method == "longrope":
        raise RopeConfigError(
            "LongRoPE GGUFs keep their per-dimension factors in the rope_factors_long/short tensors, which "
            "ropepatch does not read (header only); inspect the original config.json instead",
            path=view.path,
            key=k("scaling.type"),
        )
    if method == "yarn":
        if view.get(k("scaling.finetuned")) is not None:
            f.param("finetuned", bool(view.get(k("scaling.finetuned"))), view.where(k("scaling.finetuned")))
        log_mul = view.get(k("scaling.yarn_log_multiplier"))
        if log_mul is not None:
            # llama.cpp: yarn_log_multiplier = 0.1 * mscale_all_dim (DeepSeek-V2); cos/sin factor 1,
            # softmax scaled by mscale(s, mscale_all_dim)^2 -- transformers' mscale == mscale_all_dim
            m = number(log_mul, view, k("scaling.yarn_log_multiplier")) / 0.1
            f.param("mscale", m, view.where(k("scaling.yarn_log_multiplier")) + " / 0.1")
            f.param("mscale_all_dim", m, view.where(k("scaling.yarn_log_multiplier")) + " / 0.1")
        attn = view.get(k("scaling.attn_factor"))
        if attn is not None and log_mul is None:
            attn = number(attn, view, k("scaling.attn_factor"))
            if attn != 1.0 and f.values.get("factor"):
                # ggml multiplies YaRN's own temperature by attn_factor; transformers' attention_factor replaces it
                f.param("attention_factor", get_mscale(f.values["factor"]) * attn, view.where(k("scaling.attn_factor")))
    return f
