"""The llama.cpp command-line flags that reproduce a spec, where llama.cpp can express it."""

from __future__ import annotations

import math
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.methods.base import ntk_base

__all__ = ["llamacpp_flags"]


def _g(x: float) -> str:
    return f"{x:.10g}"


def _ntk_base(base: float, alpha: float, dim: int) -> float | None:
    """The NTK-aware base, or None where it leaves float64 (``**`` raises OverflowError there)."""
    try:
        b = ntk_base(base, alpha, dim)
    except (OverflowError, RopeConfigError):
        return None
    return b if math.isfinite(b) else None


def llamacpp_flags(spec: Any) -> tuple[list[str] | None, str]:
    """``(flags, note)``; ``flags`` is ``None`` when llama.cpp has no equivalent (the note says why)."""
    m = spec.method
    base = ["--rope-freq-base", _g(spec.rope_theta)]
    if m == "default":
        return base, "plain RoPE"
    if m == "linear":
        return ["--rope-scaling", "linear", "--rope-scale", _g(spec.effective_factor), *base], (
            "llama.cpp's --rope-freq-scale is 1/factor"
        )
    if m == "ntk":
        if spec.rotary_dim is None:
            return None, "needs the rotary dim to turn alpha into a base"
        b = _ntk_base(spec.rope_theta, spec.method_params["alpha"], spec.rotary_dim)
        if b is None:
            return None, "the NTK base overflows float64 (alpha is out of range)"
        return ["--rope-freq-base", _g(b)], "fixed NTK is a base change in llama.cpp"
    if m in ("ntk-margin",):
        if spec.rotary_dim is None:
            return None, "needs the rotary dim to compute the base"
        b = _ntk_base(spec.rope_theta, spec.effective_factor + 1, spec.rotary_dim)
        if b is None:
            return None, "the NTK base overflows float64 (factor is out of range)"
        return ["--rope-freq-base", _g(b)], "NTK-Margin is a base change"
    if m in ("yarn", "ntk-by-parts"):
        q = spec.method_params
        flags = [
            "--rope-scaling",
            "yarn",
            "--rope-scale",
            _g(spec.effective_factor),
            "--yarn-orig-ctx",
            str(spec.effective_original),
            "--yarn-beta-fast",
            _g(q["beta_fast"]),
            "--yarn-beta-slow",
            _g(q["beta_slow"]),
            *base,
        ]
        attention = spec.attention_factor()
        if m == "ntk-by-parts":
            # ggml multiplies its own 0.1 ln s + 1 by attn_factor: cancel it out
            from ropepatch.methods.base import get_mscale

            flags += ["--yarn-attn-factor", _g(1.0 / get_mscale(spec.effective_factor))]
        elif q.get("attention_factor") is not None or (q.get("mscale") and q.get("mscale_all_dim")):
            from ropepatch.methods.base import get_mscale

            flags += ["--yarn-attn-factor", _g(attention / get_mscale(spec.effective_factor))]
        note = (
            ""
            if q.get("truncate", True)
            else "llama.cpp always truncates the correction range (truncate=false differs)"
        )
        return flags, note
    if m == "llama3":
        return None, "llama.cpp bakes llama3 scaling into the GGUF's rope_freqs tensor at conversion; no flag"
    if m == "longrope":
        return None, "llama.cpp reads LongRoPE factors from GGUF tensors written at conversion; no flag"
    return None, f"llama.cpp has no equivalent of {m} (no dynamic NTK, partial-NTK or NTK-YaRN flags)"
