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
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = [
    "REQUIRED",
    "Method",
    "Param",
    "Prepared",
    "correction_range",
    "default_inv_freq",
    "get_mscale",
    "linear_ramp",
    "ntk_base",
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


class Method:
    """Base class of every scaling method, built-in or third-party.

    Subclasses set the class attributes and implement :meth:`compute`. ``prepare`` fills in
    defaults and validates; override it to add checks, calling ``super().prepare`` first.
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    formula: str = ""
    dynamic: bool = False
    #: ``"required"``, ``"optional"`` or ``"unused"``
    uses_factor: str = "unused"
    uses_original: str = "unused"
    params: tuple[Param, ...] = ()
    #: the transformers ``rope_type`` that computes this method exactly, if any
    transformers_type: str | None = None

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
                    raise bad(f"expected a number, got {value!r}") from None
            else:
                raise bad(f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise bad(f"must be a finite number, got {value!r}")
        if p.kind == "int":
            if float(value) != int(value):
                raise bad(f"expected a whole number, got {value!r}")
            return int(value)
        return float(value)
    if p.kind == "floats":
        if not isinstance(value, (list, tuple)):
            raise bad(f"expected a list of numbers, got {type(value).__name__}")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"element {i} must be a finite number, got {v!r}")
            if v <= 0:
                raise bad(f"element {i} must be positive, got {v!r}")
            out.append(float(v))
        return tuple(out)
    return value


# -- shared float64 helpers (bloc97's helpers, identical in every later implementation) -----
def default_inv_freq(base: float, dim: int) -> list[float]:
    """``1 / base**(2i/dim)`` for ``i`` in ``0 .. dim/2-1``."""
    return [1.0 / (base ** ((2 * i) / dim)) for i in range(dim // 2)]


def ntk_base(base: float, alpha: float, dim: int) -> float:
    """NTK-aware base change ``b * alpha**(d/(d-2))``."""
    if dim <= 2:
        raise RopeConfigError(f"NTK-style base changes need a rotary dim above 2, got {dim}", key="rotary_dim")
    return base * alpha ** (dim / (dim - 2))


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
    return [x * (1 - m) + y * m for x, y, m in zip(a, b, mask)]


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


def seq_len_int(seq_len: Any) -> int | None:
    """Accept ints, floats and 0-d tensors (transformers passes a tensor) for ``seq_len``."""
    if seq_len is None:
        return None
    try:
        return int(seq_len)
    except (TypeError, ValueError):
        raise RopeConfigError(f"seq_len must be a whole number, got {seq_len!r}") from None
