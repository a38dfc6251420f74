"""Per-dimension frequency divisors: llama.cpp's ``rope_freqs`` tensor (``freq_factors`` of ``ggml_rope_ext``).

A GGUF may carry its scaling only as one divisor per rotary frequency. ropepatch reads such a vector as
``llama3`` when it is exactly Llama 3.1's rule; any other vector is this method: the same per-dimension
division LongRoPE applies with one factor set, without LongRoPE's short/long switch or its attention factor.
"""

from __future__ import annotations

from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import REQUIRED, Method, Param, Prepared, default_inv_freq, require_dim


class PerDim(Method):
    name = "per-dim"
    aliases = ("freq-factors", "rope-freqs", "per-dimension")
    formula = "inv_freq[i] = b^(-2i/d) / f_i (llama.cpp rope_freqs); cos,sin unscaled"
    params = (Param("freq_factors", "floats", REQUIRED, "one positive divisor per rotary frequency (d/2 values)"),)

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        where = kw.get("where") or (lambda k: None)
        n = len(p.params["freq_factors"])
        if spec.rotary_dim is not None and n != spec.rotary_dim // 2:
            raise RopeConfigError(
                f"freq_factors has {n} entries but the rotary dim {spec.rotary_dim} needs {spec.rotary_dim // 2} "
                "(rotary_dim/2)",
                path=spec.source,
                key=where("freq_factors") or "freq_factors",
            )
        return p

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        factors = prepared.params["freq_factors"]
        return [f / r for f, r in zip(default_inv_freq(spec.rope_theta, d), factors, strict=True)], 1.0


@hookimpl
def register_methods(register: Any) -> None:
    register(PerDim())
