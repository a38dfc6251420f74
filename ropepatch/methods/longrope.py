"""LongRoPE (Phi-3 ``su`` / ``longrope``): searched per-dimension factors, short below L0, long above."""

from __future__ import annotations

import math
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import REQUIRED, Method, Param, Prepared, check_params, require_dim, seq_len_int


class LongRope(Method):
    name = "longrope"
    aliases = ("su", "long-rope")
    formula = "inv_freq[i] = 1/(f_i * b^(2i/d)), f = short if L<=L0 else long; cos,sin *= sqrt(1+ln s/ln L0)"
    dynamic = True
    length_dependence = "switch"  # long factors past the original context, short ones below
    uses_factor = "optional"
    uses_original = "required"
    params = (
        Param("short_factor", "floats", REQUIRED, "per-dimension divisors used while L <= L0"),
        Param("long_factor", "floats", REQUIRED, "per-dimension divisors used once L > L0"),
        Param("attention_factor", "float", None, "explicit cos/sin multiplier"),
    )
    transformers_type = "longrope"

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        where = kw.get("where") or (lambda k: None)
        check_params(self.name, spec, p.params, where, positive=("attention_factor",))
        if p.params["attention_factor"] is None and self.scale(spec, p) > 1 and p.L0 < 2:
            raise RopeConfigError(
                "LongRoPE's attention factor sqrt(1 + ln s / ln L0) needs an original context of at least 2, "
                f"got {p.original_max_position_embeddings}",
                path=spec.source,
                key=where("original_max_position_embeddings") or "original_max_position_embeddings",
            )
        if spec.rotary_dim is not None:
            for key in ("short_factor", "long_factor"):
                n = len(p.params[key])
                if n != spec.rotary_dim // 2:
                    raise RopeConfigError(
                        f"{key} has {n} entries but the rotary dim {spec.rotary_dim} needs "
                        f"{spec.rotary_dim // 2} (rotary_dim/2)",
                        path=spec.source,
                        key=where(key) or key,
                    )
        return p

    def scale(self, spec: Any, prepared: Prepared) -> float:
        if prepared.factor is not None:
            return prepared.factor
        if spec.max_position_embeddings is None:
            return 1.0
        return spec.max_position_embeddings / prepared.L0

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        L0 = prepared.L0
        L = seq_len_int(seq_len)
        factors = prepared.params["long_factor"] if (L and L > L0) else prepared.params["short_factor"]
        inv = [1.0 / (f * spec.rope_theta ** ((2 * i) / d)) for i, f in enumerate(factors[: d // 2])]
        attention = prepared.params["attention_factor"]
        if attention is None:
            s = self.scale(spec, prepared)
            attention = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(L0))
        return inv, attention

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        return int(round(self.scale(spec, prepared) * prepared.L0))


@hookimpl
def register_methods(register: Any) -> None:
    register(LongRope())
