"""``RopeSpec``: one normalized, validated description of a checkpoint's RoPE, whatever its dialect.

Every adapter consumes this. It holds the canonical method name, the common quantities
(``rope_theta``, ``rotary_dim``, ``factor``, the original and maximum context), the method's own
parameters and, for each value, where it came from.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ropepatch.errors import RopeConfigError, short_repr
from ropepatch.methods.base import seq_len_int

if TYPE_CHECKING:
    import torch

__all__ = ["RopeSpec"]

_SCHEMA = "ropepatch-spec/1"

#: the largest rotary dimension a spec accepts (real models use 32-512)
MAX_ROTARY_DIM = 1 << 16


class _CheckedCall(type):
    """Turns a call with an unknown or missing field into a RopeConfigError naming the closest field.

    ``RopeSpec(facter=4)`` would otherwise raise the dataclass ``__init__``'s TypeError.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            inspect.signature(cls.__init__).bind(None, *args, **kwargs)  # type: ignore[misc]
        except TypeError as exc:
            names = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
            unknown = [k for k in kwargs if k not in names]
            if unknown:
                close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RopeConfigError(f"{cls.__name__} has no field {unknown[0]!r}{hint}", key=unknown[0]) from None
            key = "method" if not args and "method" not in kwargs else None
            raise RopeConfigError(f"{cls.__name__}(...): {exc}", key=key) from None
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True, eq=True)
class RopeSpec(metaclass=_CheckedCall):
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
    #: the names of the values an override set (fields, method parameters, and ``"method"`` when an
    #: override named the method): filled by :func:`ropepatch.detection.resolve` where the layers are
    #: applied, so adapters ask ``"factor" in spec.overridden`` instead of parsing provenance text
    overridden: frozenset[str] = frozenset()
    # resolved at construction: the Method object and its prepared (defaults filled) parameters
    _method_obj: Any = field(default=None, init=False, repr=False, compare=False)
    _prepared: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from ropepatch.registry import get_registry

        _check_containers(self)
        where = self.provenance.get
        method = get_registry().method(self.method, source=self.source, key=where("method") or "method")
        object.__setattr__(self, "method", _canon(method.name))
        object.__setattr__(self, "rope_theta", _positive_float(self.rope_theta, "rope_theta", self, where))
        for name in ("rotary_dim", "head_dim", "original_max_position_embeddings", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _positive_int(value, name, self, where))
        if self.rotary_dim is not None and self.rotary_dim % 2:
            raise RopeConfigError(
                f"rotary_dim must be even, got {self.rotary_dim}",
                path=self.source,
                key=where("rotary_dim") or "rotary_dim",
            )
        if self.rotary_dim is not None and self.rotary_dim < 2:
            raise RopeConfigError(
                "rotary_dim must be at least 2", path=self.source, key=where("rotary_dim") or "rotary_dim"
            )
        if self.rotary_dim is not None and self.rotary_dim > MAX_ROTARY_DIM:
            # no model rotates more than a few hundred dims; a huge value would make every
            # frequency computation allocate memory in proportion to a number the file merely declared
            raise RopeConfigError(
                f"rotary_dim {self.rotary_dim} is beyond any real model (at most {MAX_ROTARY_DIM})",
                path=self.source,
                key=where("rotary_dim") or "rotary_dim",
            )
        if self.factor is not None:
            object.__setattr__(self, "factor", _positive_float(self.factor, "factor", self, where))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "provenance", MappingProxyType({str(k): str(v) for k, v in self.provenance.items()}))
        object.__setattr__(self, "warnings", tuple(str(w) for w in self.warnings))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        object.__setattr__(self, "overridden", frozenset(self.overridden))
        prepared = method.prepare(self, where=where)
        object.__setattr__(self, "_method_obj", method)
        object.__setattr__(self, "_prepared", prepared)
        extra = [w for w in prepared.warnings if w not in self.warnings]
        object.__setattr__(self, "warnings", self.warnings + tuple(extra))
        # parameters the method does not declare were reported as ignored; they are not part of the
        # spec (so junk in a config's rope dict cannot break equality, hashing or JSON round trips)
        declared = {p.name for p in method.params}
        kept = {k: _jsonable(v) for k, v in self.params.items() if k in declared}
        object.__setattr__(self, "params", MappingProxyType(kept))
        context = self._checked(lambda: method.effective_context(self, prepared), "the effective context")
        if context is not None and (not isinstance(context, int) or context < 1):
            raise RopeConfigError(
                f"the effective context (factor x original context) is {context!r} tokens; check factor",
                path=self.source,
                key=where("factor") or "factor",
            )

    def _checked(self, fn: Any, what: str) -> Any:
        """``fn()``, with float64 overflow or a division by zero turned into a RopeConfigError."""
        try:
            return fn()
        except ArithmeticError as exc:  # OverflowError, ZeroDivisionError: inputs out of float64 range
            raise RopeConfigError(
                f"{self.method}: {what} cannot be computed ({exc}); factor, rope_theta or a method "
                "parameter is out of range",
                path=self.source,
                key=self.provenance.get("factor") or "factor",
            ) from None

    # -- the public contract -----------------------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        """True when the frequencies depend on the current total length."""
        return bool(self._method_obj.dynamic)

    @property
    def effective_factor(self) -> float | None:
        """The factor the method computes with (after defaults such as max/original)."""
        factor: float | None = self._prepared.factor
        return factor

    @property
    def effective_original(self) -> int | None:
        """The original (pre-training) context the method computes with."""
        original: int | None = self._prepared.original_max_position_embeddings
        return original

    @property
    def method_params(self) -> Mapping[str, Any]:
        """The method's parameters with every default filled in."""
        return MappingProxyType(dict(self._prepared.params))

    @property
    def effective_context(self) -> int | None:
        """The context the checkpoint is meant to run at (``None`` where it grows with the input)."""
        context: int | None = self._checked(
            lambda: self._method_obj.effective_context(self, self._prepared), "the effective context"
        )
        return context

    @property
    def softmax_scale(self) -> float:
        """Multiplier of the attention softmax scale beyond cos/sin (DeepSeek's mscale_all_dim²; else 1)."""
        value = self._checked(lambda: self._method_obj.softmax_scale(self, self._prepared), "the softmax scale")
        return _positive_result(value, "softmax scale", self)

    def query_scale(self, position: int) -> float:
        """Multiplier of the query at a 0-based position (Qwen-1 logn; 1.0 for other methods)."""
        pos = seq_len_int(position, name="position")
        if pos is None or pos < 0:
            raise RopeConfigError(f"position must be a whole number >= 0, got {short_repr(position)}")
        value = self._checked(lambda: self._method_obj.query_scale(self, self._prepared, pos), "the query scale")
        return _positive_result(value, "query scale", self)

    @property
    def needs_query_scaling(self) -> bool:
        """True when the method scales queries by position (Qwen-1 ``use_logn_attn``)."""
        return bool(self.method == "qwen-dynamic-ntk" and self._prepared.params.get("use_logn_attn"))

    def compute(self, seq_len: int | None = None) -> tuple[list[float], float]:
        """``(inv_freq, attention_factor)`` as float64 Python values, without torch."""
        return self._compute(self, seq_len)

    def _compute(self, spec: Any, seq_len: int | None) -> tuple[list[float], float]:
        inv, attention = self._checked(
            lambda: self._method_obj.compute(spec, self._prepared, seq_len), f"the frequencies at seq_len={seq_len}"
        )
        inv = list(inv)
        if not all(_finite_positive(x) for x in inv) or not _finite_positive(attention):
            raise RopeConfigError(
                f"{self.method} produced non-finite or non-positive frequencies or attention factor for "
                f"seq_len={seq_len}; check factor, rope_theta and the method parameters",
                path=self.source,
                key=self.provenance.get("factor") or "factor",
            )
        return [float(x) for x in inv], float(attention)

    def attention_factor(self, seq_len: int | None = None) -> float:
        """The cos/sin multiplier alone (no rotary dim needed: no built-in method's factor depends on it)."""
        proxy: Any = self if self.rotary_dim is not None else _WithDim(self)
        return self._compute(proxy, seq_len)[1]

    def frequencies(
        self, seq_len: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, float]:
        """Inverse frequencies (float32, length ``rotary_dim // 2``) and the cos/sin attention factor.

        For dynamic methods ``seq_len`` is the current total length (max position + 1); ``None`` is the
        static or initial state. Computed in float64, returned as float32.
        """
        import torch

        inv, attention = self.compute(seq_len)
        # explicit CPU: from_pretrained builds models under a `torch.device("meta")` context
        tensor = torch.tensor(inv, dtype=torch.float64, device="cpu").to(torch.float32)
        if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
            # finite positive in float64 but outside float32's range (rope_theta of 1e300, say)
            raise RopeConfigError(
                f"{self.method} frequencies for seq_len={seq_len} leave float32's range "
                f"({min(inv):.3g} .. {max(inv):.3g}); check rope_theta and factor",
                path=self.source,
                key=self.provenance.get("rope_theta") or "rope_theta",
            )
        # no device: the caller's default device, as torch.tensor would give (meta under from_pretrained)
        target = torch.device(device) if device is not None else torch.get_default_device()
        if target != tensor.device:
            tensor = tensor.to(target)
        return tensor, attention

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an equal spec."""
        out: dict[str, Any] = {"schema": _SCHEMA}
        for f in _public_fields():
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {k: _jsonable(v) for k, v in value.items()}
            elif isinstance(value, frozenset):
                value = sorted(value)
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
            raise RopeConfigError(
                f"unsupported spec schema {short_repr(schema)} (this ropepatch reads {_SCHEMA!r})", key="schema"
            )
        _check_field_names(cls, data)
        if "method" not in data:
            raise RopeConfigError("a spec dict needs 'method'", key="method")
        return cls(**data)

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> RopeSpec:
        """A copy with some fields changed (validated again)."""
        _check_field_names(type(self), changes)
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

    rotary_dim = 64  # any real head size: NTK exponents d/(d-2) need d > 2

    def __init__(self, spec: RopeSpec) -> None:
        self._spec = spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)


def _canon(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _positive_result(value: Any, what: str, spec: RopeSpec) -> float:
    if not _finite_positive(value):
        raise RopeConfigError(
            f"{spec.method}: the {what} is {short_repr(value)}, not a finite positive number; "
            "check the method parameters",
            path=spec.source,
            key=spec.provenance.get("factor") or "factor",
        )
    return float(value)


def _check_field_names(cls: type, data: Mapping[str, Any]) -> None:
    names = sorted(f.name for f in fields(cls) if f.init)
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RopeConfigError(f"unknown spec keys: {', '.join(unknown)}{hint}", key=unknown[0])


_SCALAR = (str, int, float, bool, type(None))


def _check_containers(spec: RopeSpec) -> None:
    """The mapping and sequence fields have the shapes to_dict/from_dict can carry through JSON."""

    def bad(name: str, what: str) -> RopeConfigError:
        return RopeConfigError(f"{name} must be {what}, got {type(getattr(spec, name)).__name__}", key=name)

    if not isinstance(spec.method, str):
        raise bad("method", "a method name")
    source = spec.source
    if isinstance(source, os.PathLike):
        object.__setattr__(spec, "source", os.fspath(source))
    elif source is not None and not isinstance(source, str):
        raise bad("source", "a path string or None")
    if spec.model is not None and not isinstance(spec.model, str):
        raise bad("model", "a string or None")
    if not isinstance(spec.provenance, Mapping):
        raise bad("provenance", "a mapping of key to where the value came from")
    if not all(isinstance(k, _SCALAR) and isinstance(v, _SCALAR) for k, v in spec.provenance.items()):
        raise RopeConfigError("provenance keys and values must be strings", path=spec.source, key="provenance")
    if not isinstance(spec.params, Mapping):
        raise bad("params", "a mapping of parameter name to value")
    if not all(isinstance(k, str) for k in spec.params):
        raise RopeConfigError(
            f"parameter names must be strings, got {short_repr(list(spec.params))}", path=spec.source, key="params"
        )
    overridden = spec.overridden
    if isinstance(overridden, (str, bytes, Mapping)) or not isinstance(overridden, (list, tuple, set, frozenset)):
        raise bad("overridden", "a set of value names")
    if not all(isinstance(v, str) for v in overridden):
        raise RopeConfigError("overridden must hold value names (strings)", path=spec.source, key="overridden")
    for name in ("warnings", "notes"):
        value = getattr(spec, name)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad(name, "a list of strings")
        if not all(isinstance(v, _SCALAR) for v in value):
            raise RopeConfigError(f"{name} must be a list of strings", path=spec.source, key=name)


def _as_float(value: Any) -> float | None:
    """``float(value)`` for a real number within float64's range, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:  # an int beyond float64
        return None
    return out if math.isfinite(out) else None


def _positive_float(value: Any, name: str, spec: RopeSpec, where: Any) -> float:
    out = _as_float(value)
    if out is None or out <= 0:
        kind = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{type(value).__name__} "
        raise RopeConfigError(
            f"{name} must be a finite positive number, got {kind}{short_repr(value)}",
            path=spec.source,
            key=where(name) or name,
        )
    return out


def _positive_int(value: Any, name: str, spec: RopeSpec, where: Any) -> int:
    out = _as_float(value)
    whole = out is not None and (isinstance(value, int) or out.is_integer())
    if not whole or value <= 0:
        raise RopeConfigError(
            f"{name} must be a positive whole number, got {short_repr(value)}",
            path=spec.source,
            key=where(name) or name,
        )
    return int(value)
