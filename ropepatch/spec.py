"""``RopeSpec``: one normalized, validated description of a checkpoint's RoPE, whatever its dialect.

Every adapter consumes this. It holds the canonical method name, the common quantities
(``rope_theta``, ``rotary_dim``, ``factor``, the original and maximum context), the method's own
parameters and, for each value, where it came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ropepatch.errors import RopeConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["RopeSpec"]

_SCHEMA = "ropepatch-spec/1"


@dataclass(frozen=True, eq=True)
class RopeSpec:
    """An immutable, validated RoPE scaling spec.

    Construct it with :func:`ropepatch.detect` or directly; construction canonicalises the method
    name and validates every value, raising :class:`ropepatch.RopeConfigError` when something is
    wrong.
    """

    method: str
    rope_theta: float = 10000.0
    rotary_dim: int | None = None
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    head_dim: int | None = None
    source: str | None = None
    model: str | None = None
    # resolved at construction: the Method object and its prepared (defaults filled) parameters
    _method_obj: Any = field(default=None, init=False, repr=False, compare=False)
    _prepared: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from ropepatch.registry import get_registry

        where = self.provenance.get
        method = get_registry().method(self.method, source=self.source, key=where("method"))
        object.__setattr__(self, "method", _canon(method.name))
        object.__setattr__(self, "rope_theta", _positive_float(self.rope_theta, "rope_theta", self, where))
        for name in ("rotary_dim", "head_dim", "original_max_position_embeddings", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _positive_int(value, name, self, where))
        if self.rotary_dim is not None and self.rotary_dim % 2:
            raise RopeConfigError(
                f"rotary_dim must be even, got {self.rotary_dim}", path=self.source, key=where("rotary_dim")
            )
        if self.rotary_dim is not None and self.rotary_dim < 2:
            raise RopeConfigError("rotary_dim must be at least 2", path=self.source, key=where("rotary_dim"))
        if self.factor is not None:
            object.__setattr__(self, "factor", _positive_float(self.factor, "factor", self, where))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "provenance", MappingProxyType({str(k): str(v) for k, v in self.provenance.items()}))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "notes", tuple(self.notes))
        prepared = method.prepare(self, where=where)
        object.__setattr__(self, "_method_obj", method)
        object.__setattr__(self, "_prepared", prepared)
        extra = [w for w in prepared.warnings if w not in self.warnings]
        object.__setattr__(self, "warnings", self.warnings + tuple(extra))

    # -- the public contract -----------------------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        """True when the frequencies depend on the current total length."""
        return bool(self._method_obj.dynamic)

    @property
    def effective_factor(self) -> float | None:
        """The factor the method computes with (after defaults such as max/original)."""
        return self._prepared.factor

    @property
    def effective_original(self) -> int | None:
        """The original (pre-training) context the method computes with."""
        return self._prepared.original_max_position_embeddings

    @property
    def method_params(self) -> Mapping[str, Any]:
        """The method's parameters with every default filled in."""
        return MappingProxyType(dict(self._prepared.params))

    @property
    def effective_context(self) -> int | None:
        """The context the checkpoint is meant to run at (``None`` where it grows with the input)."""
        return self._method_obj.effective_context(self, self._prepared)

    @property
    def softmax_scale(self) -> float:
        """Multiplier of the attention softmax scale beyond cos/sin (DeepSeek's mscale_all_dim²; else 1)."""
        return float(self._method_obj.softmax_scale(self, self._prepared))

    def query_scale(self, position: int) -> float:
        """Multiplier of the query at a 0-based position (Qwen-1 logn; 1.0 for other methods)."""
        return float(self._method_obj.query_scale(self, self._prepared, int(position)))

    @property
    def needs_query_scaling(self) -> bool:
        """True when the method scales queries by position (Qwen-1 ``use_logn_attn``)."""
        return bool(self.method == "qwen-dynamic-ntk" and self._prepared.params.get("use_logn_attn"))

    def compute(self, seq_len: int | None = None) -> tuple[list[float], float]:
        """``(inv_freq, attention_factor)`` as float64 Python values, without torch."""
        inv, attention = self._method_obj.compute(self, self._prepared, seq_len)
        if not all(math.isfinite(x) and x > 0 for x in inv) or not math.isfinite(attention):
            raise RopeConfigError(
                f"{self.method} produced non-finite or non-positive frequencies for seq_len={seq_len}; "
                "check factor and rope_theta",
                path=self.source,
            )
        return list(inv), float(attention)

    def attention_factor(self, seq_len: int | None = None) -> float:
        """The cos/sin multiplier alone (no rotary dim needed: no built-in method's factor depends on it)."""
        proxy: Any = self if self.rotary_dim is not None else _WithDim(self)
        return float(self._method_obj.compute(proxy, self._prepared, seq_len)[1])

    def frequencies(
        self, seq_len: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, float]:
        """Inverse frequencies (float32, length ``rotary_dim // 2``) and the cos/sin attention factor.

        For dynamic methods ``seq_len`` is the current total length (max position + 1); ``None`` is the
        static or initial state. Computed in float64, returned as float32.
        """
        import torch

        inv, attention = self.compute(seq_len)
        tensor = torch.tensor(inv, dtype=torch.float64).to(torch.float32)
        if device is not None:
            tensor = tensor.to(device)
        return tensor, attention

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an equal spec."""
        out: dict[str, Any] = {"schema": _SCHEMA}
        for f in _public_fields():
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {k: _jsonable(v) for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RopeSpec:
        """Rebuild a spec from :meth:`to_dict` output (unknown keys are an error)."""
        if not isinstance(data, Mapping):
            raise RopeConfigError(f"a spec dict must be a mapping, got {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", _SCHEMA)
        if schema != _SCHEMA:
            raise RopeConfigError(f"unsupported spec schema {schema!r} (this ropepatch reads {_SCHEMA!r})")
        names = {f.name for f in _public_fields()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RopeConfigError(f"unknown spec keys: {', '.join(unknown)}")
        if "method" not in data:
            raise RopeConfigError("a spec dict needs 'method'", key="method")
        for key in ("warnings", "notes"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> RopeSpec:
        """A copy with some fields changed (validated again)."""
        data = {f.name: getattr(self, f.name) for f in _public_fields()}
        data.update(changes)
        return type(self)(**data)

    def summary(self) -> str:
        """One line: method, factor and contexts."""
        parts = [self.method]
        if self.effective_factor is not None and self.method != "default":
            parts.append(f"factor={self.effective_factor:g}")
        if self.effective_original is not None:
            parts.append(f"original={self.effective_original}")
        ctx = self.effective_context
        parts.append(f"context={ctx if ctx is not None else ('grows with input' if self.is_dynamic else 'unknown')}")
        parts.append(f"theta={self.rope_theta:g}")
        if self.rotary_dim is not None:
            parts.append(f"rotary_dim={self.rotary_dim}")
        return " ".join(parts)

    def __hash__(self) -> int:
        return hash(self.to_json())


def _public_fields() -> list[Any]:
    return [f for f in fields(RopeSpec) if f.init]


class _WithDim:
    """``spec`` seen with a placeholder rotary dim, to compute dim-independent quantities."""

    rotary_dim = 64

    def __init__(self, spec: RopeSpec) -> None:
        self._spec = spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)


def _canon(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _positive_float(value: Any, name: str, spec: RopeSpec, where: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RopeConfigError(
            f"{name} must be a number, got {type(value).__name__} {value!r}", path=spec.source, key=where(name) or name
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise RopeConfigError(
            f"{name} must be a finite positive number, got {value!r}", path=spec.source, key=where(name) or name
        )
    return value


def _positive_int(value: Any, name: str, spec: RopeSpec, where: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RopeConfigError(f"{name} must be a whole number, got {value!r}", path=spec.source, key=where(name) or name)
    if float(value) != int(value) or value <= 0:
        raise RopeConfigError(
            f"{name} must be a positive whole number, got {value!r}", path=spec.source, key=where(name) or name
        )
    return int(value)
