"""GGUF ``{arch}.rope.*`` metadata and RoPE tensors (llama.cpp's encoding of the same methods).

Keys first (``rope.scaling.type``, ``.factor``, ``.original_context_length``, YaRN's, legacy
``rope.scale_linear``); then the tensors the reader brought along (:mod:`ropepatch.metadata.gguf`):
``rope_freqs.weight`` (Llama 3.x: ``llama3`` when the divisors are exactly its rule, else ``per-dim``)
and ``rope_factors_long/short.weight`` (LongRoPE: Phi-3, MiniCPM3).
"""

from __future__ import annotations

import math
from typing import Any

from ropepatch.detectors.common import gguf_arch, number, read_common
from ropepatch.detectors.freq_factors import F32_TOLERANCE, llama3_from_divisors
from ropepatch.errors import RopeConfigError, short_repr
from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.gguf import MAX_TENSOR_VALUES, TENSOR_NOTE
from ropepatch.metadata.view import ConfigView, Finding
from ropepatch.methods.base import get_mscale

_TYPES = {"none": "default", "linear": "linear", "yarn": "yarn", "longrope": "longrope"}
FREQS, LONG, SHORT = "rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"


@hookimpl
def detect_rope(view: ConfigView) -> Finding | None:
    if view.kind != "gguf":
        return None
    arch = gguf_arch(view)
    if arch is None:
        raise RopeConfigError("GGUF metadata has no general.architecture", path=view.path, key="general.architecture")
    keys = _from_keys(view, arch)
    if view.get(LONG) is not None or view.get(SHORT) is not None:
        return _longrope(view, arch, keys)
    if keys is not None and keys.method == "longrope":
        why = view.get(TENSOR_NOTE) or "the file has no such tensors"
        raise RopeConfigError(
            f"says longrope, but its per-dimension factors (rope_factors_long/short tensors) cannot be read: {why}",
            path=view.path,
            key=f"{arch}.rope.scaling.type",
        )
    if view.get(FREQS) is not None:
        return _rope_freqs(view, arch, keys)
    if (keys is None or keys.method == "default") and view.get(TENSOR_NOTE):
        keys = keys or Finding("default", detector="gguf", provenance={"method": "no scaling in GGUF keys"})
        keys.warnings.append(
            f"{view.get(TENSOR_NOTE)}; scaling a GGUF keeps in tensors (rope_freqs: Llama 3.x; rope_factors_long/"
            "short: LongRoPE) was not checked"
        )
    return keys


def _from_keys(view: ConfigView, arch: str) -> Finding | None:
    """The scaling the ``{arch}.rope.*`` keys state (None: none stated)."""
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
        return f  # its factors are tensors: see _longrope
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


def _factors(view: ConfigView, name: str) -> list[float]:
    """A per-dimension factor table as finite positive floats (the GGUF reader checked its own; a dict may not)."""
    raw = view.get(name)
    if not isinstance(raw, (list, tuple)) or not 0 < len(raw) <= MAX_TENSOR_VALUES:
        raise RopeConfigError(
            f"must be a list of 1 to {MAX_TENSOR_VALUES} numbers, got {short_repr(raw)}", path=view.path, key=name
        )
    out = [number(v, view, name) for v in raw]
    if not all(v > 0 for v in out):
        raise RopeConfigError("every per-dimension factor must be positive", path=view.path, key=name)
    return [float(v) for v in out]


def _common(view: ConfigView) -> tuple[float, int | None]:
    values, _ = read_common(view)
    return float(values["rope_theta"]), values.get("rotary_dim")


def _rope_freqs(view: ConfigView, arch: str, keys: Finding | None) -> Finding:
    """``rope_freqs.weight``: llama3 when it is exactly that rule, else the divisors as given (per-dim)."""
    divisors = _factors(view, FREQS)
    where = view.where(FREQS)
    theta, dim = _common(view)
    n = len(divisors)
    if dim is not None and dim != 2 * n:
        raise RopeConfigError(
            f"has {n} divisors but the rotary dim is {dim} (llama.cpp needs rotary_dim/2 = {dim // 2})",
            path=view.path,
            key=FREQS,
        )
    dim = 2 * n
    linear = None
    if keys is not None and keys.method not in ("default", "linear"):
        raise RopeConfigError(
            f"carries both rope_freqs (per-dimension divisors) and rope.scaling.type {keys.method}; llama.cpp "
            "applies both and ropepatch has no single method for that; convert the original checkpoint again",
            path=view.path,
            key=FREQS,
        )
    if keys is not None and keys.method == "linear":
        linear = keys.values.get("factor")
    if linear is None:
        original = view.get(f"{arch}.rope.scaling.original_context_length")
        hit = llama3_from_divisors(divisors, theta, dim, original if isinstance(original, int) else None)
        if hit is not None:
            params, note = hit
            f = Finding("llama3", detector="gguf")
            f.provenance["method"] = f"{where} (the llama3 rule, every divisor reproduced to float32 precision)"
            f.set("factor", params["factor"], f"{where}[-1]")
            f.set("original_max_position_embeddings", params["original_max_position_embeddings"], f"{where} ramp")
            f.param("low_freq_factor", params["low_freq_factor"], f"{where} ramp")
            f.param("high_freq_factor", params["high_freq_factor"], f"{where} ramp")
            f.notes.append(note)
            return f
        if all(abs(r - 1.0) <= F32_TOLERANCE for r in divisors):
            f = Finding("default", detector="gguf")
            f.provenance["method"] = f"{where} (every divisor is 1)"
            return f
    f = Finding("per-dim", detector="gguf")
    f.provenance["method"] = f"{where} (per-dimension divisors, not the llama3 rule)"
    if linear is not None:
        # llama.cpp multiplies every frequency by 1/factor and divides each by its rope_freqs entry
        f.param(
            "freq_factors",
            tuple(r * linear for r in divisors),
            f"{where} * {view.where(arch + '.rope.scaling.factor')}",
        )
        f.notes.append(
            f"rope_freqs combined with linear x{linear:g}: one divisor per dimension, as llama.cpp applies both"
        )
    else:
        f.param("freq_factors", tuple(divisors), where)
        f.notes.append(f"rope_freqs: {n} divisors that are not the llama3 rule; applied as given, as llama.cpp does")
    return f


def _longrope(view: ConfigView, arch: str, keys: Finding | None) -> Finding:
    """``rope_factors_long/short.weight`` (Phi-3, MiniCPM3): LongRoPE with the keys' original context."""
    for name, other in ((LONG, SHORT), (SHORT, LONG)):
        if view.get(name) is None:
            raise RopeConfigError(
                f"the file has {other} but no {name}; LongRoPE needs both factor sets", path=view.path, key=other
            )
    if keys is not None and keys.method not in ("default", "longrope"):
        raise RopeConfigError(
            f"carries LongRoPE factor tensors and rope.scaling.type {keys.method}; which one is meant is unclear",
            path=view.path,
            key=f"{arch}.rope.scaling.type",
        )
    f = keys if keys is not None and keys.method == "longrope" else Finding("longrope", detector="gguf")
    f.method = "longrope"
    f.provenance["method"] = f"{view.where(LONG)} + {view.where(SHORT)}"
    f.param("long_factor", tuple(_factors(view, LONG)), view.where(LONG))
    f.param("short_factor", tuple(_factors(view, SHORT)), view.where(SHORT))
    key = f"{arch}.rope.scaling.original_context_length"
    if "original_max_position_embeddings" not in f.values and view.get(key) is not None:
        f.set("original_max_position_embeddings", number(view.get(key), view, key, integer=True), view.where(key))
    attn_key = f"{arch}.rope.scaling.attn_factor"
    if view.get(attn_key) is not None:
        attn = number(view.get(attn_key), view, attn_key)
        rule = _longrope_attention(view, arch, f)
        if rule is not None and abs(attn - rule) <= 8 * F32_TOLERANCE * rule:
            # the converter stored sqrt(1 + ln s / ln L0) in float32: the method derives the same value
            f.notes.append(f"{view.where(attn_key)} = {attn:.7g} is LongRoPE's own attention factor rule")
        else:
            f.param("attention_factor", attn, view.where(attn_key))
    return f


def _longrope_attention(view: ConfigView, arch: str, f: Finding) -> float | None:
    """LongRoPE's attention factor for this file's contexts, or None when they are missing."""
    L0 = f.values.get("original_max_position_embeddings")
    s: Any = f.values.get("factor")
    if s is None:
        ctx = view.get(f"{arch}.context_length")
        s = ctx / L0 if isinstance(ctx, int) and isinstance(L0, int) and L0 > 0 else None
    if s is None or not isinstance(L0, int) or L0 < 2:
        return None
    return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L0))
