"""What a detector reads (``ConfigView``) and what it answers (``Finding``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigView", "Finding", "MISSING"]

MISSING: Any = object()


@dataclass
class ConfigView:
    """A checkpoint's metadata as one mapping, with where it came from.

    ``data`` is the config dict (for GGUF: the header's key/value pairs). ``label`` names the
    file in provenance strings (``config.json``, ``model.gguf``, ``dict``). ``names`` are the
    repository ids or model names the metadata or its location reveal, for the known-checkpoint
    table.
    """

    data: Mapping[str, Any]
    path: str | None = None
    kind: str = "dict"  # "config.json", "gguf", "dict", "transformers"
    label: str = "dict"
    names: tuple[str, ...] = ()
    prefix: str = ""  # e.g. "text_config." when the rope keys live in a nested text config
    extras: dict[str, Any] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """A provenance string for ``key`` (dotted for nested keys)."""
        return f"{self.label}:{self.prefix}{key}"

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def first(self, *keys: str) -> tuple[Any, str]:
        """The first of ``keys`` present with a non-null value, and its provenance (``""`` if none is)."""
        for key in keys:
            value = self.data.get(key)
            if value is not None:
                return value, self.where(key)
        return None, ""

    @property
    def model_type(self) -> str:
        value = self.data.get("model_type")
        return str(value).lower() if isinstance(value, str) else ""


@dataclass
class Finding:
    """A detector's answer: the method, the values it read and where each came from."""

    method: str
    values: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detector: str = ""

    def set(self, name: str, value: Any, where: str) -> None:
        """Record a common value (factor, original/max context, rope_theta, rotary_dim)."""
        self.values[name] = value
        self.provenance[name] = where

    def param(self, name: str, value: Any, where: str) -> None:
        """Record a method parameter."""
        self.params[name] = value
        self.provenance[name] = where

    def update_from(self, mapping: Mapping[str, Any], keys: Any, where: Any) -> None:
        """Copy ``keys`` present in ``mapping`` into params, provenance from ``where(key)``."""
        for key in keys:
            if key in mapping and mapping[key] is not None:
                self.param(key, mapping[key], where(key))
