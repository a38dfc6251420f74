"""Llama 3.1's wavelength-banded interpolation."""

from __future__ import annotations

import math
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import Method, Param, Prepared, check_params, default_inv_freq, require_dim


class Llama3(Method):
    name = "llama3"
    aliases = ("llama-3", "llama3.1", "use-scaled-rope")
    formula = "lambda<L0/high: keep; lambda>L0/low: /s; between: smooth blend"
    uses_factor = "required"
    uses_original = "required"
    params = (
        Param("low_freq_factor", "float", 1.0, "wavelengths above L0/low are divided by s"),
        Param("high_freq_factor", "float", 4.0, "wavelengths below L0/high are kept"),
    )
    transformers_type = "llama3"

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        # both divide the original context: zero or negative makes wavelength bands meaningless
        where = kw.get("where") or (lambda k: None)
        check_params(self.name, spec, p.params, where, positive=("low_freq_factor", "high_freq_factor"))
        if p.params["high_freq_factor"] == p.params["low_freq_factor"]:
            raise RopeConfigError(
                "llama3 needs high_freq_factor != low_freq_factor (the smoothing divides by their difference)",
                path=spec.source,
                key="high_freq_factor",
            )
        return p

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        # the factor is not a context ratio here (Llama 3.1: 8 with 131072/8192 = 16)
        return spec.max_position_embeddings or super().effective_context(spec, prepared)

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        s, L0 = prepared.s, prepared.L0
        low, high = prepared.params["low_freq_factor"], prepared.params["high_freq_factor"]
        low_wavelen, high_wavelen = L0 / low, L0 / high
        out = []
        for f in default_inv_freq(spec.rope_theta, d):
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / s)
            else:
                smooth = (L0 / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / s + smooth * f)
        return out, 1.0


@hookimpl
def register_methods(register: Any) -> None:
    register(Llama3())
