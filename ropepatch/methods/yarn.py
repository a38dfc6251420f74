"""YaRN (static, as transformers computes it) and dynamic YaRN (jquesnelle/yarn's reference)."""

from __future__ import annotations

from typing import Any, ClassVar

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import (
    Method,
    Param,
    Prepared,
    blend,
    check_params,
    check_ramp_base,
    correction_range,
    default_inv_freq,
    get_mscale,
    linear_ramp,
    require_dim,
    seq_len_int,
)


def yarn_inv_freq(
    base: float, dim: int, factor: float, original: int, beta_fast: float, beta_slow: float, truncate: bool
) -> list[float]:
    """YaRN's NTK-by-parts frequencies: interpolate low frequencies, keep high ones, ramp between."""
    extrapolation = default_inv_freq(base, dim)
    interpolation = [f / factor for f in extrapolation]
    low, high = correction_range(beta_fast, beta_slow, dim, base, original, truncate)
    keep = [1.0 - r for r in linear_ramp(low, high, dim // 2)]
    return blend(interpolation, extrapolation, keep)


_YARN_PARAMS = (
    Param("attention_factor", "float", None, "explicit cos/sin multiplier; replaces the computed one"),
    Param("beta_fast", "float", 32.0, "rotations at which extrapolation stops (high-frequency bound)"),
    Param("beta_slow", "float", 1.0, "rotations at which interpolation starts (low-frequency bound)"),
    Param("mscale", "float", None, "DeepSeek: numerator multiplier of ln s in the temperature"),
    Param("mscale_all_dim", "float", None, "DeepSeek: denominator multiplier (also scales the softmax)"),
    Param("truncate", "bool", True, "floor/ceil the correction range (gpt-oss: false)"),
    Param("finetuned", "bool", None, "Nous flag; only dynamic-yarn reads it"),
)


class Yarn(Method):
    name = "yarn"
    aliases: ClassVar[tuple[str, ...]] = ("deepseek-yarn", "yarn-deepseek", "telechat3-yarn")
    formula = "NTK-by-parts ramp over [beta_fast, beta_slow] + cos,sin *= 0.1 ln s + 1"
    uses_factor = "optional"
    uses_original = "required"
    params: ClassVar[tuple[Param, ...]] = _YARN_PARAMS
    transformers_type: ClassVar[str | None] = "yarn"

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        factor = p.factor
        params = dict(p.params)
        warnings = list(p.warnings)
        original = p.original_max_position_embeddings
        if factor is None:
            if spec.max_position_embeddings is None:
                raise RopeConfigError(
                    "yarn needs 'factor' (or max_position_embeddings to derive it)", path=spec.source, key="factor"
                )
            factor = spec.max_position_embeddings / original
            warnings.append(f"yarn: no factor given; using max_position_embeddings/original = {factor:g}")
        self._check(spec, params, warnings, kw.get("where") or (lambda k: None))
        return Prepared(factor, original, params, tuple(warnings))

    def _check(self, spec: Any, params: dict[str, Any], warnings: list[str], where: Any) -> None:
        """Checks every YaRN variant shares; fixes ``params`` in place where transformers would."""
        for key, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
            if key in params and params[key] == 0:
                # transformers reads these with `or`, so 0 silently means the default; say so.
                warnings.append(f"{self.name}: {key}=0 is read as the default {default:g}, as transformers does")
                params[key] = default
        # the correction range takes ln(L0 / (2*pi*beta)) / ln(base); the temperatures divide by
        # 0.1*mscale*ln(s) + 1, which a negative mscale can make zero
        check_params(
            self.name,
            spec,
            params,
            where,
            positive=("beta_fast", "beta_slow", "attention_factor"),
            non_negative=("mscale", "mscale_all_dim"),
        )
        check_ramp_base(self.name, spec, where)

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        return self._at_scale(spec, prepared, prepared.s)

    def _at_scale(self, spec: Any, prepared: Prepared, scale: float) -> tuple[list[float], float]:
        d = require_dim(spec)
        q = prepared.params
        inv = yarn_inv_freq(
            spec.rope_theta,
            d,
            scale,
            prepared.L0,
            q["beta_fast"],
            q["beta_slow"],
            q["truncate"],
        )
        if q.get("attention_factor") is not None:
            return inv, q["attention_factor"]
        if q.get("mscale") and q.get("mscale_all_dim"):
            return inv, get_mscale(scale, q["mscale"]) / get_mscale(scale, q["mscale_all_dim"])
        return inv, get_mscale(scale)

    def softmax_scale(self, spec: Any, prepared: Prepared) -> float:
        # DeepSeek-V2/V3 multiply the softmax scale by mscale(s, mscale_all_dim)^2 over the whole head.
        q = prepared.params
        if q["mscale"] and q["mscale_all_dim"]:
            return get_mscale(prepared.s, q["mscale_all_dim"]) ** 2
        return 1.0


class NTKByParts(Yarn):
    """YaRN's frequencies without its temperature (the YaRN paper's 2-way NTK-by-parts)."""

    name = "ntk-by-parts"
    aliases = ("ntk-by-parts-2way", "pntk-2way")
    formula = "NTK-by-parts ramp over [beta_fast, beta_slow], no attention factor"
    params = tuple(p for p in _YARN_PARAMS if p.name in ("beta_fast", "beta_slow", "truncate"))
    transformers_type = None

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        return self._at_scale(spec, prepared, prepared.s)[0], 1.0

    def softmax_scale(self, spec: Any, prepared: Prepared) -> float:
        return 1.0


class DynamicYarn(Yarn):
    """jquesnelle/yarn's ``LlamaDynamicYaRNScaledRotaryEmbedding``: s follows L/L0, mscale recomputed."""

    name = "dynamic-yarn"
    aliases = ("yarn-dynamic",)
    formula = "YaRN with s = max(L/L0, factor if finetuned else 1)"
    dynamic = True
    transformers_type = None

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = Method.prepare(self, spec, **kw)
        params = {**p.params, "finetuned": bool(p.params["finetuned"])}
        factor = p.factor
        if factor is None and spec.max_position_embeddings is not None:
            factor = spec.max_position_embeddings / p.original_max_position_embeddings
        if factor is None:
            if params["finetuned"]:
                raise RopeConfigError(
                    "dynamic-yarn with finetuned=true needs 'factor' (the fine-tuned scale)",
                    path=spec.source,
                    key="factor",
                )
            factor = 1.0
        warnings = list(p.warnings)
        self._check(spec, params, warnings, kw.get("where") or (lambda k: None))
        return Prepared(factor, p.original_max_position_embeddings, params, tuple(warnings))

    def scale_at(self, prepared: Prepared, seq_len: int | None) -> float:
        floor = prepared.s if prepared.params["finetuned"] else 1.0
        L = seq_len_int(seq_len)
        if L is None:
            return floor
        return max(L / prepared.L0, floor)

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        return self._at_scale(spec, prepared, self.scale_at(prepared, seq_len))

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        return None


@hookimpl
def register_methods(register: Any) -> None:
    register(Yarn())
    register(NTKByParts())
    register(DynamicYarn())
