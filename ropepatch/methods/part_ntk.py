"""bloc97's early 3-way partial NTK (2023-07-07), as bhenrym14's airophin checkpoints used it."""

from __future__ import annotations

from typing import Any

from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import (
    Method,
    Param,
    Prepared,
    blend,
    check_ntk_dim,
    check_params,
    check_ramp_base,
    correction_range,
    default_inv_freq,
    linear_ramp,
    ntk_base,
    require_dim,
)


class PartNTK(Method):
    name = "part-ntk"
    aliases = ("pntk", "pntk-3way", "partial-ntk", "ntk-by-parts-3way", "part-ntk-3way")
    formula = "blend linear<->NTK over [beta_0, beta_1] turns, then ->unscaled over [gamma_0, gamma_1]"
    uses_factor = "required"
    uses_original = "required"
    params = (
        Param("beta_0", "float", 1.25, "NTK/linear ramp, high-frequency bound (turns in L0)"),
        Param("beta_1", "float", 0.75, "NTK/linear ramp, low-frequency bound"),
        Param("gamma_0", "float", 16.0, "extrapolation ramp, high-frequency bound"),
        Param("gamma_1", "float", 2.0, "extrapolation ramp, low-frequency bound"),
        Param("ntk_factor", "float", 1.0, "weight of the NTK blend"),
        Param("extrapolation_factor", "float", 1.0, "weight of the unscaled blend"),
    )

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        where = kw.get("where") or (lambda k: None)
        # the ramps take ln(L0 / (2*pi*turns)) / ln(base): turns must be positive, base not 1
        check_params(self.name, spec, p.params, where, positive=("beta_0", "beta_1", "gamma_0", "gamma_1"))
        check_ramp_base(self.name, spec, where)
        check_ntk_dim(self.name, spec, where)
        return p

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        b, s, L0, q = spec.rope_theta, prepared.s, prepared.L0, prepared.params
        base = default_inv_freq(b, d)
        lin = [f / s for f in base]
        ntk = default_inv_freq(ntk_base(b, s, d), d)
        lo, hi = correction_range(q["beta_0"], q["beta_1"], d, b, L0)
        inv = blend(lin, ntk, [(1 - r) * q["ntk_factor"] for r in linear_ramp(lo, hi, d // 2)])
        lo, hi = correction_range(q["gamma_0"], q["gamma_1"], d, b, L0)
        inv = blend(inv, base, [(1 - r) * q["extrapolation_factor"] for r in linear_ramp(lo, hi, d // 2)])
        return inv, 1.0


@hookimpl
def register_methods(register: Any) -> None:
    register(PartNTK())
