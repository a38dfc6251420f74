"""NTK-aware base changes: fixed alpha, the dynamic rules, Qwen-1's rule and NTK-Margin/NTK-YaRN."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.methods.base import (
    Method,
    Param,
    Prepared,
    check_ntk_dim,
    check_params,
    default_inv_freq,
    ntk_base,
    ntk_exponent,
    require_dim,
    seq_len_int,
)


def _where(kw: dict[str, Any]) -> Any:
    return kw.get("where") or (lambda k: None)


class FixedNTK(Method):
    name = "ntk"
    aliases = ("ntk-aware", "ntk-alpha", "fixed-ntk", "ntk-fixed-alpha", "rope-alpha")
    formula = "b' = b * alpha^(d/(d-2)); inv_freq[i] = b'^(-2i/d)"
    uses_factor = "optional"
    params = (Param("alpha", "float", None, "NTK alpha; 'factor' is used when absent"),)

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        check_ntk_dim(self.name, spec, _where(kw))
        alpha = p.params["alpha"] if p.params["alpha"] is not None else p.factor
        if alpha is None:
            raise RopeConfigError(
                "method 'ntk' needs 'alpha' (or 'factor'); e.g. ROPEPATCH='ntk:alpha=2'",
                path=spec.source,
                key="alpha",
            )
        if alpha <= 0:
            raise RopeConfigError(f"ntk alpha must be positive, got {alpha}", path=spec.source, key="alpha")
        return Prepared(p.factor, p.original_max_position_embeddings, {**p.params, "alpha": alpha}, p.warnings)

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        return default_inv_freq(ntk_base(spec.rope_theta, prepared.params["alpha"], d), d), 1.0

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        return spec.max_position_embeddings


class DynamicNTK(Method):
    """transformers' ``dynamic`` (emozilla's alpha-slope form, clamped at L0)."""

    name = "dynamic"
    aliases = ("dynamic-ntk", "hf-dynamic", "dynamic-ntk-alpha-slope")
    formula = "b' = b * (s*L/L0 - (s-1))^(d/(d-2)), L = max(L, L0)"
    dynamic = True
    uses_factor = "required"
    uses_original = "optional"
    transformers_type = "dynamic"

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        check_ntk_dim(self.name, spec, _where(kw))
        return p

    def length0(self, spec: Any, prepared: Prepared) -> int:
        L0 = prepared.original_max_position_embeddings or spec.max_position_embeddings
        if L0 is None:
            raise RopeConfigError(
                f"method {self.name!r} needs the original context (original_max_position_embeddings "
                "or max_position_embeddings)",
                path=spec.source,
                key="max_position_embeddings",
            )
        return int(L0)

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        L0 = self.length0(spec, prepared)
        L = max(seq_len_int(seq_len) or L0, L0)
        s = prepared.s
        base = spec.rope_theta * ((s * L / L0) - (s - 1)) ** ntk_exponent(d)
        return default_inv_freq(base, d), 1.0

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        return None  # grows with the input


class UnclampedDynamicNTK(DynamicNTK):
    """The original ratio form that FalconLite's patched TGI used: no clamp, the base shrinks below L0."""

    name = "dynamic-ntk-unclamped"
    aliases = ("falconlite-dntk", "dynamic-ntk-ratio", "dynamic-ntk-original")
    formula = "b' = b * (L/(a_s*L0))^(d/(d-2)), no clamp (a_s = alpha_scaler, default 1)"
    uses_factor = "unused"
    uses_original = "required"
    params = (Param("alpha_scaler", "float", 1.0, "FalconLite's DNTK_ALPHA_SCALER (divides L)"),)

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        check_params(self.name, spec, p.params, _where(kw), positive=("alpha_scaler",))
        return p

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        L0 = self.length0(spec, prepared)
        L = seq_len_int(seq_len)
        if not L:  # no length yet (None or 0 tokens): the ratio form would shrink the base to 0
            return default_inv_freq(spec.rope_theta, d), 1.0
        ratio = L / prepared.params["alpha_scaler"] / L0
        return default_inv_freq(spec.rope_theta * ratio ** ntk_exponent(d), d), 1.0


class QwenDynamicNTK(Method):
    """Qwen-1's ``use_dynamic_ntk`` rule, with its optional logn query scaling."""

    name = "qwen-dynamic-ntk"
    aliases = ("qwen1-dynamic-ntk", "qwen-ntk", "qwen1")
    formula = "a = max(2^ceil(log2(L/L0)+1) - 1, 1); b' = b * a^(d/(d-2)); q *= log_L0(pos+1) if use_logn_attn"
    dynamic = True
    uses_original = "required"
    params = (Param("use_logn_attn", "bool", False, "scale queries by log_L0(position) past L0"),)

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        check_ntk_dim(self.name, spec, _where(kw))
        if p.params["use_logn_attn"] and p.L0 < 2:
            raise RopeConfigError.at(
                "use_logn_attn scales queries by log(pos)/log(L0): the original context must be at least 2, "
                f"got {p.original_max_position_embeddings}",
                path=spec.source,
                field="original_max_position_embeddings",
                where=_where(kw)("original_max_position_embeddings"),
            )
        return p

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        L0 = prepared.L0
        L = seq_len_int(seq_len)
        alpha = 1.0
        if L is not None and L > 0:
            alpha = max(2 ** math.ceil(math.log2(L / L0) + 1) - 1, 1)
        return default_inv_freq(ntk_base(spec.rope_theta, alpha, d), d), 1.0

    def query_scale(self, spec: Any, prepared: Prepared, position: int) -> float:
        L0 = prepared.L0
        if not prepared.params["use_logn_attn"] or position + 1 <= L0:
            return 1.0
        return math.log(position + 1) / math.log(L0)

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        return spec.max_position_embeddings


class NTKMargin(Method):
    """LightOn's NTK-Margin (Alfred-40B-1023): NTK with alpha = s + 1."""

    name = "ntk-margin"
    aliases: ClassVar[tuple[str, ...]] = ()
    formula = "b' = b * (s+1)^(d/(d-2))"
    uses_factor = "required"
    uses_original = "optional"

    def prepare(self, spec: Any, **kw: Any) -> Prepared:
        p = super().prepare(spec, **kw)
        check_ntk_dim(self.name, spec, _where(kw))
        return p

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        d = require_dim(spec)
        return default_inv_freq(ntk_base(spec.rope_theta, prepared.s + 1, d), d), 1.0


class NTKYarn(NTKMargin):
    """NTK-Margin plus YaRN's temperature on q and k (the Alfred recipe)."""

    name = "ntk-yarn"
    aliases = ("ntk-margin-yarn",)
    formula = "b' = b * (s+1)^(d/(d-2)); cos,sin *= 1 + 0.1 ln s"

    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        inv, _ = super().compute(spec, prepared, seq_len)
        s = prepared.s
        return inv, (1.0 + 0.1 * math.log(s)) if s > 1 else 1.0


@hookimpl
def register_methods(register: Any) -> None:
    for method in (FixedNTK(), DynamicNTK(), UnclampedDynamicNTK(), QwenDynamicNTK(), NTKMargin(), NTKYarn()):
        register(method)
