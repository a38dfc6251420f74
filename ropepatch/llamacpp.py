"""One translation: a :class:`~ropepatch.spec.RopeSpec` -> the settings llama.cpp reads.

llama.cpp takes RoPE scaling from three places, and :class:`LlamaCppSettings` renders each:

* command-line flags of llama-server / llama-cli / llama-perplexity ... (:meth:`LlamaCppSettings.flags`),
* llama-cpp-python's ``Llama(...)`` arguments (:meth:`LlamaCppSettings.llama_kwargs`),
* GGUF metadata keys ``{arch}.rope.*`` (:meth:`LlamaCppSettings.gguf_keys`).

The semantics follow llama.cpp's own code (``llama-context.cpp``, ggml's ``rope_yarn``):

* ``rope_freq_scale`` is ``1/factor`` (``--rope-scale s`` sets it to ``1/s``); linear scaling is exactly
  positions ``m/s``.
* NTK-aware scaling is a different base: ``--rope-freq-base b*alpha^(d/(d-2))``, no scaling type.
* YaRN: ggml ramps between interpolation and extrapolation over the correction dims computed from
  ``yarn_orig_ctx`` and the betas (floored/ceiled: llama.cpp always truncates), and multiplies cos/sin
  by ``attn_factor * (1 + 0.1 ln s)``. llama.cpp sets ``attn_factor`` itself whenever ``ext_factor != 0``
  (``get_mscale(s) / (1 + 0.1 ln s)``, i.e. 1, overwriting ``--yarn-attn-factor``), then multiplies it by
  the GGUF key ``{arch}.rope.scaling.attn_factor``. So a YaRN attention factor ``A`` other than the
  paper's ``0.1 ln s + 1`` travels as that key: ``A / (0.1 ln s + 1)``, a kv-override on the command line.
* With ``ext_factor == 0`` (scaling none/linear), cos/sin are multiplied by ``attn_factor`` times the
  same key, so a constant attention factor on plain or NTK RoPE is expressible too (NTK-YaRN).

What llama.cpp cannot do raises :class:`LlamaCppUnsupported` (a :class:`RopeConfigError`) naming the
method and the closest method it can run; nothing is approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.methods.base import get_mscale, ntk_base

__all__ = [
    "LlamaCppSettings",
    "LlamaCppUnsupported",
    "REFUSALS",
    "llamacpp_flags",
    "GGUFRope",
    "gguf_rope",
    "settings_for_gguf",
    "translate",
]

#: llama.cpp's ``enum llama_rope_scaling_type``
SCALING_TYPES = {"none": 0, "linear": 1, "yarn": 2}

#: llama.cpp's YaRN betas where the GGUF does not set them (``llama-hparams.h``)
DEFAULT_BETA_FAST = 32.0
DEFAULT_BETA_SLOW = 1.0

#: architectures whose loader reads ``{arch}.rope.scaling.yarn_beta_fast/slow`` from the GGUF
#: (every other one takes the betas from the context parameters only)
BETA_KEY_ARCHS = frozenset({"grok", "mistral3"})

#: method -> (why llama.cpp cannot run it, the closest method it can run)
REFUSALS: dict[str, tuple[str, str]] = {
    "dynamic": (
        "llama.cpp has no dynamic NTK: its RoPE base is fixed for the whole context",
        "ntk with alpha = the factor you need at your longest context (a fixed base), or yarn",
    ),
    "dynamic-ntk-unclamped": (
        "llama.cpp has no dynamic NTK: its RoPE base is fixed for the whole context",
        "ntk with a fixed alpha, or yarn",
    ),
    "qwen-dynamic-ntk": (
        "llama.cpp has neither Qwen-1's dynamic NTK nor its log-n query scaling",
        "ntk with a fixed alpha (without log-n attention)",
    ),
    "dynamic-yarn": (
        "llama.cpp's YaRN factor is fixed; it does not grow with the input",
        "yarn with the factor of your longest context",
    ),
    "part-ntk": (
        "llama.cpp has no 3-way partial NTK (its only ramp is YaRN's interpolation/extrapolation blend)",
        "yarn (or ntk-by-parts) with the same factor and original context",
    ),
    "longrope": (
        "llama.cpp reads LongRoPE's per-dimension factors only from the rope_factors_long/short tensors "
        "its converter writes; there is no flag or key for them",
        "convert the original checkpoint with llama.cpp's convert_hf_to_gguf.py, which writes those tensors",
    ),
    "per-dim": (
        "llama.cpp applies per-dimension frequency divisors only through a GGUF's rope_freqs tensor; "
        "there is no flag or key for them",
        "a GGUF that carries the divisors as its rope_freqs tensor (llama.cpp then needs nothing)",
    ),
    "llama3": (
        "llama.cpp applies llama3 scaling only through the rope_freqs tensor its converter writes; "
        "there is no flag or key for it",
        "convert the original checkpoint with llama.cpp's convert_hf_to_gguf.py (it writes rope_freqs)",
    ),
}


class LlamaCppUnsupported(RopeConfigError):
    """A spec llama.cpp cannot express; ``method`` and ``alternative`` say what and what instead."""

    def __init__(self, method: str, reason: str, alternative: str, *, path: str | None = None) -> None:
        self.method = method
        self.alternative = alternative
        super().__init__(
            f"llama.cpp cannot run RoPE method {method!r}: {reason}; closest it can run: {alternative}",
            path=path,
            key="method",
        )


def _g(x: float) -> str:
    return f"{x:.10g}"


@dataclass(frozen=True)
class LlamaCppSettings:
    """The llama.cpp values for one spec; ``None`` means "leave llama.cpp's (or the GGUF's) value"."""

    method: str
    scaling_type: str  # "none", "linear" or "yarn"
    freq_base: float
    #: the scaling factor s (``rope_freq_scale`` is ``1/s``); None for scaling none
    factor: float | None = None
    yarn_orig_ctx: int | None = None
    yarn_ext_factor: float | None = None
    yarn_beta_fast: float | None = None
    yarn_beta_slow: float | None = None
    #: the GGUF key ``{arch}.rope.scaling.attn_factor`` (multiplies llama.cpp's own cos/sin factor)
    attn_factor_key: float | None = None
    #: the context the spec is meant for (``-c``), when it has one
    context: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def freq_scale(self) -> float | None:
        """llama.cpp's ``rope_freq_scale`` (``1/factor``)."""
        return None if self.factor is None else 1.0 / self.factor

    def flags(self, arch: str, *, context: bool = True) -> list[str]:
        """Flags for llama-server / llama-cli (``arch`` names the attn-factor kv-override key)."""
        out = ["--rope-scaling", self.scaling_type]
        if self.factor is not None:
            out += ["--rope-scale", _g(self.factor)]
        if self.yarn_orig_ctx is not None:
            out += ["--yarn-orig-ctx", str(self.yarn_orig_ctx)]
        if self.yarn_ext_factor is not None:
            out += ["--yarn-ext-factor", _g(self.yarn_ext_factor)]
        if self.yarn_beta_fast is not None:
            out += ["--yarn-beta-fast", _g(self.yarn_beta_fast)]
        if self.yarn_beta_slow is not None:
            out += ["--yarn-beta-slow", _g(self.yarn_beta_slow)]
        out += ["--rope-freq-base", _g(self.freq_base)]
        if self.attn_factor_key is not None:
            out += ["--override-kv", f"{arch}.rope.scaling.attn_factor=float:{_g(self.attn_factor_key)}"]
        if context and self.context is not None:
            out += ["-c", str(self.context)]
        return out

    def llama_kwargs(self, arch: str, *, context: bool = True) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama(...)`` (``kv_overrides`` only when needed)."""
        out: dict[str, Any] = {
            "rope_scaling_type": SCALING_TYPES[self.scaling_type],
            "rope_freq_base": self.freq_base,
            "rope_freq_scale": 1.0 if self.factor is None else 1.0 / self.factor,
        }
        if self.yarn_orig_ctx is not None:
            out["yarn_orig_ctx"] = self.yarn_orig_ctx
        if self.yarn_ext_factor is not None:
            out["yarn_ext_factor"] = self.yarn_ext_factor
        if self.yarn_beta_fast is not None:
            out["yarn_beta_fast"] = self.yarn_beta_fast
        if self.yarn_beta_slow is not None:
            out["yarn_beta_slow"] = self.yarn_beta_slow
        if self.attn_factor_key is not None:
            out["kv_overrides"] = {f"{arch}.rope.scaling.attn_factor": self.attn_factor_key}
        if context and self.context is not None:
            out["n_ctx"] = self.context
        return out

    def gguf_keys(self, arch: str) -> dict[str, tuple[str, Any]]:
        """GGUF metadata ``key -> (type, value)`` (type: "string", "float32" or "uint32").

        Raises :class:`LlamaCppUnsupported` where the keys cannot say it: YaRN betas other than llama.cpp's
        defaults are read from the GGUF only for some architectures.
        """
        k = f"{arch}.rope."
        out: dict[str, tuple[str, Any]] = {
            k + "freq_base": ("float32", float(self.freq_base)),
            k + "scaling.type": ("string", self.scaling_type),
        }
        if self.factor is not None:
            out[k + "scaling.factor"] = ("float32", float(self.factor))
        if self.yarn_orig_ctx is not None:
            out[k + "scaling.original_context_length"] = ("uint32", int(self.yarn_orig_ctx))
        betas = (self.yarn_beta_fast or DEFAULT_BETA_FAST, self.yarn_beta_slow or DEFAULT_BETA_SLOW)
        if betas != (DEFAULT_BETA_FAST, DEFAULT_BETA_SLOW):
            if arch not in BETA_KEY_ARCHS:
                raise LlamaCppUnsupported(
                    self.method,
                    f"YaRN betas {betas} differ from llama.cpp's defaults and llama.cpp's {arch!r} loader reads "
                    "no beta keys from a GGUF",
                    "`ropepatch run -- llama-server ...`, which passes --yarn-beta-fast/--yarn-beta-slow",
                )
            out[k + "scaling.yarn_beta_fast"] = ("float32", betas[0])
            out[k + "scaling.yarn_beta_slow"] = ("float32", betas[1])
        if self.attn_factor_key is not None:
            out[k + "scaling.attn_factor"] = ("float32", float(self.attn_factor_key))
        return out

    def describe(self) -> str:
        """One line for logs: what llama.cpp will be told."""
        parts = [f"{self.method}: rope-scaling={self.scaling_type}", f"freq-base={_g(self.freq_base)}"]
        if self.factor is not None:
            parts.append(f"scale={_g(self.factor)} (freq-scale={_g(1.0 / self.factor)})")
        if self.yarn_orig_ctx is not None:
            parts.append(f"yarn-orig-ctx={self.yarn_orig_ctx}")
        if self.attn_factor_key is not None:
            parts.append(f"attn_factor key={_g(self.attn_factor_key)}")
        return ", ".join(parts)


def _refuse(spec: Any, method: str, reason: str | None = None, alternative: str | None = None) -> LlamaCppUnsupported:
    why, instead = REFUSALS.get(method, (f"llama.cpp has no equivalent of {method}", "yarn, linear or ntk"))
    return LlamaCppUnsupported(method, reason or why, alternative or instead, path=getattr(spec, "source", None))


def _ntk(spec: Any, alpha: float) -> float:
    if spec.rotary_dim is None:
        raise RopeConfigError(
            f"{spec.method} in llama.cpp is a base change, which needs the rotary dimension; "
            "give it with --set rotary_dim=N (or a config/GGUF that states it)",
            path=spec.source,
            key="rotary_dim",
        )
    try:
        b = ntk_base(spec.rope_theta, alpha, spec.rotary_dim)
    except OverflowError:
        b = math.inf
    if not math.isfinite(b):
        raise RopeConfigError(
            f"the NTK base for alpha {alpha} overflows a float; check alpha/factor", path=spec.source, key="alpha"
        )
    return b


def _base_multiplier(factor: float, arch: str | None, yarn_log_multiplier: float | None) -> float:
    """The cos/sin multiplier llama.cpp applies on its own for YaRN (before the attn_factor key)."""
    if yarn_log_multiplier:
        # llama.cpp: get_mscale(s, m) / get_mscale(s, log_mul); m = log_mul only for deepseek2
        m = yarn_log_multiplier if arch == "deepseek2" else 1.0
        return get_mscale(factor, m) / get_mscale(factor, yarn_log_multiplier)
    return get_mscale(factor)


def translate(
    spec: Any,
    *,
    arch: str | None = None,
    yarn_log_multiplier: float | None = None,
    has_rope_freqs: bool = False,
    gguf_attn_factor: float | None = None,
    has_factor_tensors: bool = False,
) -> LlamaCppSettings:
    """The llama.cpp settings that reproduce ``spec`` exactly, or :class:`LlamaCppUnsupported`.

    ``arch`` is the GGUF's ``general.architecture``; ``yarn_log_multiplier`` its
    ``{arch}.rope.scaling.yarn_log_multiplier`` when set (llama.cpp then derives YaRN's attention factor
    differently); ``has_rope_freqs`` says the GGUF carries a ``rope_freqs`` tensor (llama3 scaling baked in,
    which llama.cpp applies on its own); ``has_factor_tensors`` that it carries LongRoPE's
    ``rope_factors_long/short`` tensors (likewise); ``gguf_attn_factor`` its ``{arch}.rope.scaling.attn_factor`` when set
    (llama.cpp multiplies every cos/sin by it, so a spec that needs none overrides it with 1).
    """
    settings = _translate(spec, arch, yarn_log_multiplier, has_rope_freqs, has_factor_tensors)
    if settings.attn_factor_key is None and gguf_attn_factor is not None and gguf_attn_factor != 1.0:
        settings = replace(settings, attn_factor_key=1.0)
    return settings


def _translate(
    spec: Any, arch: str | None, yarn_log_multiplier: float | None, has_rope_freqs: bool, has_factor_tensors: bool
) -> LlamaCppSettings:
    m = spec.method
    # Scaling a GGUF keeps in its own tensors is applied by llama.cpp itself: nothing to add, as long as no
    # override changed the spec (flags cannot rewrite those tensors, so an overridden spec is refused below).
    untouched = not getattr(spec, "overridden", frozenset())
    q = spec.method_params
    ctx = spec.effective_context if not spec.is_dynamic else None
    if m == "default":
        return LlamaCppSettings(m, "none", spec.rope_theta, context=None)
    if m == "linear":
        return LlamaCppSettings(m, "linear", spec.rope_theta, factor=spec.effective_factor, context=ctx)
    if m == "ntk":
        alpha = q.get("alpha") or spec.effective_factor
        return LlamaCppSettings(m, "none", _ntk(spec, alpha), context=ctx, notes=("NTK-aware is a base change",))
    if m in ("ntk-margin", "ntk-yarn"):
        s = spec.effective_factor
        base = _ntk(spec, s + 1)
        attn = spec.attention_factor()
        key = None if math.isclose(attn, 1.0, rel_tol=0, abs_tol=1e-12) else attn
        return LlamaCppSettings(m, "none", base, attn_factor_key=key, context=ctx)
    if m in ("yarn", "ntk-by-parts"):
        if q.get("truncate", True) is False:
            raise _refuse(
                spec,
                m,
                "llama.cpp always floors/ceils YaRN's correction range and this spec says truncate=false (gpt-oss)",
                "yarn with truncate=true (differs in the two boundary dimensions)",
            )
        s = spec.effective_factor
        original = spec.effective_original
        if s is None or original is None:
            raise RopeConfigError(
                f"{m} needs a factor and the original context for llama.cpp", path=spec.source, key="factor"
            )
        want = spec.attention_factor()
        got = _base_multiplier(s, arch, yarn_log_multiplier)
        key = None if math.isclose(want, got, rel_tol=1e-12) else want / got
        return LlamaCppSettings(
            m,
            "yarn",
            spec.rope_theta,
            factor=s,
            yarn_orig_ctx=original,
            yarn_ext_factor=1.0,
            yarn_beta_fast=float(q.get("beta_fast", DEFAULT_BETA_FAST)),
            yarn_beta_slow=float(q.get("beta_slow", DEFAULT_BETA_SLOW)),
            attn_factor_key=key,
            context=ctx,
        )
    if m in ("llama3", "per-dim") and has_rope_freqs and untouched:
        # the GGUF's rope_freqs tensor already divides the frequencies; llama.cpp needs plain RoPE on top
        return LlamaCppSettings(
            m, "none", spec.rope_theta, context=ctx, notes=(f"{m} scaling comes from the GGUF's rope_freqs tensor",)
        )
    if m == "longrope" and has_factor_tensors and untouched:
        return LlamaCppSettings(
            m,
            "none",
            spec.rope_theta,
            context=ctx,
            notes=("longrope factors come from the GGUF's rope_factors_long/short tensors",),
        )
    if m in ("llama3", "per-dim", "longrope") and (has_rope_freqs or has_factor_tensors):
        raise _refuse(
            spec,
            m,
            f"this GGUF keeps its {m} scaling in tensors, and an override changed it; llama.cpp takes no flag or "
            "key that rewrites those tensors",
            "drop the override (llama.cpp then applies the GGUF's own tensors), or convert a checkpoint that "
            "carries the scaling you want",
        )
    raise _refuse(spec, m)


def llamacpp_flags(spec: Any, arch: str = "llama", *, facts: GGUFRope | None = None) -> tuple[list[str] | None, str]:
    """``(flags, note)`` for ``ropepatch inspect --as llama.cpp``; ``flags`` is None when inexpressible.

    ``facts`` (from :func:`gguf_rope`) describe the GGUF the flags are for; without them ``arch`` names it.
    """
    if facts is not None:
        arch = facts.arch
    try:
        if facts is not None:
            settings = translate(
                spec,
                arch=arch,
                yarn_log_multiplier=facts.yarn_log_multiplier,
                has_rope_freqs=facts.has_rope_freqs,
                gguf_attn_factor=facts.attn_factor,
                has_factor_tensors=facts.has_factor_tensors,
            )
        else:
            settings = translate(spec, arch=arch)
    except LlamaCppUnsupported as exc:
        return None, exc.reason
    except (RopeConfigError, OverflowError, ValueError, ZeroDivisionError) as exc:
        return None, str(exc)
    notes = list(settings.notes)
    if settings.freq_scale is not None:
        notes.append("llama.cpp's rope_freq_scale is 1/factor")
    if settings.attn_factor_key is not None:
        notes.append(f"the attention factor travels as the GGUF key {arch}.rope.scaling.attn_factor (kv-override)")
    return settings.flags(arch), "; ".join(notes)


@dataclass(frozen=True)
class GGUFRope:
    """The few GGUF facts the translation needs beyond the spec."""

    arch: str
    yarn_log_multiplier: float | None = None
    attn_factor: float | None = None
    has_rope_freqs: bool = False
    #: LongRoPE's rope_factors_long/short tensors
    has_factor_tensors: bool = False


def gguf_rope(path: Any) -> GGUFRope:
    """Read a GGUF's architecture and the RoPE keys that change llama.cpp's YaRN arithmetic (header only)."""
    from ropepatch.metadata.gguf import read_gguf_metadata

    data = read_gguf_metadata(path)
    arch = data.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise RopeConfigError("GGUF metadata has no general.architecture", path=str(path), key="general.architecture")

    def num(key: str) -> float | None:
        value = data.get(f"{arch}.rope.scaling.{key}")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # the reader brings the RoPE tensors along under their names (bounded reads, no gguf package needed)
    return GGUFRope(
        arch,
        num("yarn_log_multiplier"),
        num("attn_factor"),
        has_rope_freqs="rope_freqs.weight" in data,
        has_factor_tensors="rope_factors_long.weight" in data or "rope_factors_short.weight" in data,
    )


def settings_for_gguf(path: Any, spec: Any) -> tuple[LlamaCppSettings, GGUFRope]:
    """The llama.cpp settings for ``spec`` applied to the GGUF at ``path`` (its own keys accounted for)."""
    facts = gguf_rope(path)
    settings = translate(
        spec,
        arch=facts.arch,
        yarn_log_multiplier=facts.yarn_log_multiplier,
        has_rope_freqs=facts.has_rope_freqs,
        gguf_attn_factor=facts.attn_factor,
        has_factor_tensors=facts.has_factor_tensors,
    )
    return settings, facts
