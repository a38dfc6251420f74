"""What a scaling method is: its name, its parameters and its float64 math.

A method never sees a runtime or a file: it receives a resolved spec (duck-typed: ``rope_theta``,
``rotary_dim``, ``factor``, ``original_max_position_embeddings``, ``max_position_embeddings``,
``params``) and returns plain Python floats. Conversion to tensors happens in
:meth:`ropepatch.spec.RopeSpec.frequencies`, so this layer needs neither torch nor numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ropepatch.errors import RopeConfigError, short_repr

__all__ = [
    "REQUIRED",
    "Method",
    "Param",
    "Prepared",
    "check_params",
    "correction_range",
    "default_inv_freq",
    "get_mscale",
    "linear_ramp",
    "ntk_base",
    "ntk_exponent",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One parameter a method reads from ``spec.params``."""

    name: str
    kind: str  # "float", "int", "bool" or "floats" (a list of floats)
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Prepared:
    """A method's view of a spec after defaults were filled in and values checked."""

    factor: float | None
    original_max_position_embeddings: int | None
    params: Mapping[str, Any]
    warnings: tuple[str, ...] = ()

    @property
    def s(self) -> float:
        """The factor, for methods whose ``prepare`` guarantees one."""
        if self.factor is None:
            raise RopeConfigError("this method needs a scaling factor and none was resolved", key="factor")
        return self.factor

    @property
    def L0(self) -> int:
        """The original context, for methods whose ``prepare`` guarantees one."""
        if self.original_max_position_embeddings is None:
            raise RopeConfigError(
                "this method needs original_max_position_embeddings and none was resolved",
                key="original_max_position_embeddings",
            )
        return self.original_max_position_embeddings


class Method:
    """Base class of every scaling method, built-in or third-party.

    Subclasses set the class attributes and implement :meth:`compute`. ``prepare`` fills in
    defaults and validates; override it to add checks, calling ``super().prepare`` first.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    formula: ClassVar[str] = ""
    dynamic: ClassVar[bool] = False
    #: how the frequencies depend on the length, for runtimes that compute them once (a table, one
    #: vector per layer): ``"static"`` (they do not), ``"switch"`` (one switch at the original
    #: context: evaluate at the runtime's configured context, e.g. LongRoPE) or ``"curve"`` (they
    #: follow the length: a table needs one row per length; one vector per layer cannot express it).
    #: ``None``: derived from :attr:`dynamic` (``"curve"`` when dynamic, else ``"static"``)
    length_dependence: ClassVar[str | None] = None
    #: ``"required"``, ``"optional"`` or ``"unused"``
    uses_factor: ClassVar[str] = "unused"
    uses_original: ClassVar[str] = "unused"
    params: ClassVar[tuple[Param, ...]] = ()
    #: the transformers ``rope_type`` that computes this method exactly, if any
    transformers_type: ClassVar[str | None] = None

    # -- validation -----------------------------------------------------------------------
    def prepare(self, spec: Any, *, where: Callable[[str], str | None] = lambda k: None) -> Prepared:
        """Check ``spec`` and return the factor, original length and params to compute with."""
        warnings: list[str] = []
        factor = spec.factor
        original = spec.original_max_position_embeddings
        if self.uses_factor == "required" and factor is None:
            raise RopeConfigError(
                f"method {self.name!r} needs a scaling 'factor' and none was found; "
                f"add it to rope_scaling or pass factor=...",
                path=spec.source,
                key="factor",
            )
        if self.uses_original == "required" and original is None:
            if spec.max_position_embeddings is None:
                raise RopeConfigError(
                    f"method {self.name!r} needs 'original_max_position_embeddings' (the pre-training "
                    "context) and neither it nor max_position_embeddings was found",
                    path=spec.source,
                    key="original_max_position_embeddings",
                )
            original = spec.max_position_embeddings
            warnings.append(
                f"{self.name}: original_max_position_embeddings missing; using "
                f"max_position_embeddings={original} as transformers does"
            )
        params: dict[str, Any] = {}
        known = {p.name: p for p in self.params}
        for p in self.params:
            value = spec.params.get(p.name, None)
            if value is None:
                if p.default is REQUIRED:
                    raise RopeConfigError(
                        f"method {self.name!r} needs parameter {p.name!r} ({p.doc})",
                        path=spec.source,
                        key=where(p.name) or p.name,
                    )
                value = p.default
            if value is not None:
                value = _coerce(p, value, spec.source, where(p.name) or p.name)
            params[p.name] = value
        for extra in spec.params:
            if extra not in known:
                warnings.append(f"{self.name}: parameter {extra!r} is not used by this method and was ignored")
        return Prepared(factor, original, params, tuple(warnings))

    # -- math -----------------------------------------------------------------------------
    def compute(self, spec: Any, prepared: Prepared, seq_len: int | None) -> tuple[list[float], float]:
        """Return ``(inv_freq, attention_factor)`` in float64 for the current total length."""
        raise NotImplementedError

    def softmax_scale(self, spec: Any, prepared: Prepared) -> float:
        """Multiplier of the attention softmax scale this method needs beyond cos/sin (1.0: none)."""
        return 1.0

    def query_scale(self, spec: Any, prepared: Prepared, position: int) -> float:
        """Multiplier of the query at a 0-based ``position`` (1.0 for every built-in but Qwen-1 logn)."""
        return 1.0

    def effective_context(self, spec: Any, prepared: Prepared) -> int | None:
        """The context the checkpoint is meant to run at under this method."""
        if prepared.factor is not None and prepared.original_max_position_embeddings is not None:
            return int(round(prepared.factor * prepared.original_max_position_embeddings))
        return spec.max_position_embeddings

    def __repr__(self) -> str:
        return f"<ropepatch method {self.name!r}>"


def _coerce(p: Param, value: Any, source: str | None, key: str) -> Any:
    def bad(msg: str) -> RopeConfigError:
        return RopeConfigError(msg, path=source, key=key)

    if p.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad(f"expected true or false, got {value!r}")
    if p.kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad(f"expected a number, got {short_repr(value)}") from None
            else:
                raise bad(f"expected a number, got {type(value).__name__} {short_repr(value)}")
        number = _finite(value)
        if number is None:
            raise bad(f"must be a finite number, got {short_repr(value)}")
        if p.kind == "int":
            if not (isinstance(value, int) or number.is_integer()):
                raise bad(f"expected a whole number, got {short_repr(value)}")
            return int(value)
        return number
    if p.kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise bad(f"expected a list of numbers, got {type(value).__name__}")
        out = []
        for i, v in enumerate(value):
            number = None if isinstance(v, bool) or not isinstance(v, (int, float)) else _finite(v)
            if number is None:
                raise bad(f"element {i} must be a finite number, got {short_repr(v)}")
            if number <= 0:
                raise bad(f"element {i} must be positive, got {short_repr(v)}")
            out.append(number)
        return tuple(out)
    return value


def _finite(value: int | float) -> float | None:
    """``float(value)`` when finite (an int beyond float64 overflows: None)."""
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


# -- shared float64 helpers (bloc97's helpers, identical in every later implementation) -----
def default_inv_freq(base: float, dim: int) -> list[float]:
    """``1 / base**(2i/dim)`` for ``i`` in ``0 .. dim/2-1``."""
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 0:
        # a scaled base can leave the reals (negative ** fraction is complex in Python) or float64
        raise RopeConfigError(
            f"the RoPE base after scaling is {short_repr(base)}, not a finite positive number; "
            "factor, rope_theta or a method parameter is out of range",
            key="rope_theta",
        )
    return [1.0 / (base ** ((2 * i) / dim)) for i in range(dim // 2)]


def ntk_exponent(dim: int) -> float:
    """The NTK-aware exponent ``d/(d-2)``; a rotary dim of 2 has none."""
    if dim <= 2:
        raise RopeConfigError(
            f"NTK-aware scaling needs a rotary dim above 2 (its exponent is d/(d-2)), got {dim}", key="rotary_dim"
        )
    return dim / (dim - 2)


def ntk_base(base: float, alpha: float, dim: int) -> float:
    """NTK-aware base change ``b * alpha**(d/(d-2))``."""
    return base * alpha ** ntk_exponent(dim)


def check_params(
    method: str,
    spec: Any,
    params: Mapping[str, Any],
    where: Callable[[str], str | None],
    *,
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
) -> None:
    """Refuse parameters the formulas cannot take (they divide by them or take their logarithm)."""
    for key in positive:
        value = params.get(key)
        if value is not None and not value > 0:
            raise RopeConfigError(
                f"{method}: {key} must be positive, got {value!r}", path=spec.source, key=where(key) or key
            )
    for key in non_negative:
        value = params.get(key)
        if value is not None and value < 0:
            raise RopeConfigError(
                f"{method}: {key} must not be negative, got {value!r}", path=spec.source, key=where(key) or key
            )


def check_ramp_base(method: str, spec: Any, where: Callable[[str], str | None]) -> None:
    """The correction range divides by ln(rope_theta): a base of exactly 1 has no range."""
    if spec.rope_theta == 1:
        raise RopeConfigError(
            f"{method} needs rope_theta != 1 (its correction range divides by ln(rope_theta))",
            path=spec.source,
            key=where("rope_theta") or "rope_theta",
        )


def check_ntk_dim(method: str, spec: Any, where: Callable[[str], str | None]) -> None:
    """NTK-aware methods need a rotary dim above 2 (known at prepare time only when the metadata says it)."""
    if spec.rotary_dim is not None and spec.rotary_dim <= 2:
        raise RopeConfigError(
            f"{method} needs a rotary dim above 2 (its exponent is d/(d-2)), got {spec.rotary_dim}",
            path=spec.source,
            key=where("rotary_dim") or "rotary_dim",
        )


def get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * mscale * ln(s) + 1`` (1 for ``s <= 1``)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(num_rotations: float, dim: int, base: float, length: float) -> float:
    return (dim * math.log(length / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def correction_range(
    high_rot: float, low_rot: float, dim: int, base: float, length: float, truncate: bool = True
) -> tuple[float, float]:
    """Dimension-pair range whose wavelengths fit between ``high_rot`` and ``low_rot`` turns in ``length``.

    The upper clamp is ``dim - 1`` although the ramp has ``dim/2`` entries: a quirk every
    implementation shares, kept for exactness.
    """
    low = _correction_dim(high_rot, dim, base, length)
    high = _correction_dim(low_rot, dim, base, length)
    if truncate:
        low = math.floor(low)
        high = math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def linear_ramp(low: float, high: float, n: int) -> list[float]:
    """``clamp((i - low)/(high - low), 0, 1)`` for ``i < n``."""
    if low == high:
        high += 0.001  # the references' guard against a zero-width ramp
    return [min(max((i - low) / (high - low), 0.0), 1.0) for i in range(n)]


def blend(a: Sequence[float], b: Sequence[float], mask: Sequence[float]) -> list[float]:
    """``a*(1-mask) + b*mask`` element-wise."""
    return [x * (1 - m) + y * m for x, y, m in zip(a, b, mask, strict=True)]


def require_dim(spec: Any) -> int:
    """The rotary dim, or a clear error when the metadata did not say it."""
    dim = spec.rotary_dim
    if dim is None:
        raise RopeConfigError(
            "the rotary dimension is unknown (no head_dim, kv_channels, qk_rope_head_dim or "
            "hidden_size/num_attention_heads in the metadata); pass rotary_dim=... to compute frequencies",
            path=spec.source,
            key="head_dim",
        )
    return dim


def seq_len_int(seq_len: Any, name: str = "seq_len") -> int | None:
    """Accept ints, floats and 0-d tensors (transformers passes a tensor) for ``seq_len``."""
    if seq_len is None:
        return None
    try:
        value = int(seq_len)
    except (TypeError, ValueError, OverflowError):  # NaN, inf, text
        raise RopeConfigError(f"{name} must be a whole number, got {short_repr(seq_len)}", key=name) from None
    if value < 0:
        raise RopeConfigError(f"{name} must not be negative, got {value}", key=name)
    return value
