"""User overrides: keyword arguments, the ``ROPEPATCH`` environment variable, per-model mappings.

``ROPEPATCH`` grammar (entries separated by ``;``)::

    [MODEL_GLOB@]METHOD[:key=value,...]      e.g.  yarn:factor=4,original_max_position_embeddings=4096
    [MODEL_GLOB@]key=value[,key=value...]    e.g.  target_context=131072
                                                   Qwen/*@yarn:factor=4

Parsing is strict: an unknown key is an error that names the closest valid key, raised before any
model loads.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = ["ENV_VAR", "Override", "env_overrides", "parse_overrides", "override_from_mapping", "valid_keys"]

ENV_VAR = "ROPEPATCH"

COMMON_KEYS = {
    "method": "method",
    "factor": "factor",
    "scale": "factor",
    "original_max_position_embeddings": "original_max_position_embeddings",
    "original": "original_max_position_embeddings",
    "original_context": "original_max_position_embeddings",
    "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "theta": "rope_theta",
    "base": "rope_theta",
    "rotary_dim": "rotary_dim",
    "head_dim": "head_dim",
    "target_context": "target_context",
}


def valid_keys() -> set[str]:
    """Every key an override may set: the common ones plus every registered method's parameters."""
    from ropepatch.registry import get_registry

    keys = set(COMMON_KEYS)
    for method in get_registry().iter_methods():
        keys.update(p.name for p in method.params)
    return keys


@dataclass
class Override:
    """One override entry; ``pattern`` limits it to models whose name matches the glob."""

    origin: str  # "explicit", "env ROPEPATCH", "per-model mapping"
    method: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    target_context: int | None = None
    pattern: str | None = None

    def applies_to(self, names: Iterable[str]) -> bool:
        if self.pattern is None:
            return True
        pat = self.pattern.lower()
        return any(fnmatch.fnmatch(n.lower(), pat) or fnmatch.fnmatch(n.lower().rsplit("/", 1)[-1], pat) for n in names)

    def is_empty(self) -> bool:
        return self.method is None and not self.values and not self.params and self.target_context is None

    def to_env(self) -> str:
        """This override in ``ROPEPATCH`` syntax (the launcher passes overrides this way)."""
        items = {**self.values, **self.params}
        if self.target_context is not None:
            items["target_context"] = self.target_context
        body = ",".join(f"{k}={_format(v)}" for k, v in items.items())
        head = self.method or ""
        text = f"{head}:{body}" if head and body else head or body
        return f"{self.pattern}@{text}" if self.pattern else text


def _format(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _parse_value(raw: str) -> Any:
    text = raw.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _unknown_key(key: str, origin: str, keys: set[str]) -> RopeConfigError:
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return RopeConfigError(f"unknown override key {key!r}{hint} Valid keys: {', '.join(sorted(keys))}", path=origin, key=key)


def override_from_mapping(mapping: Mapping[str, Any], origin: str, pattern: str | None = None) -> Override:
    """An :class:`Override` from keyword arguments or a per-model dict (strictly checked)."""
    from ropepatch.registry import get_registry

    keys = valid_keys()
    out = Override(origin=origin, pattern=pattern)
    for key, value in mapping.items():
        if value is None:
            continue
        if key not in keys:
            raise _unknown_key(key, origin, keys)
        canon = COMMON_KEYS.get(key)
        if canon == "method":
            out.method = get_registry().method(str(value), source=origin, key="method").name
        elif canon == "target_context":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or int(value) != value:
                raise RopeConfigError(f"target_context must be a positive whole number, got {value!r}", path=origin, key=key)
            out.target_context = int(value)
        elif canon is not None:
            out.values[canon] = value
        else:
            out.params[key] = value
    return out


def parse_overrides(text: str, origin: str = f"env {ENV_VAR}") -> list[Override]:
    """Parse ``ROPEPATCH`` syntax into overrides; every mistake is a :class:`RopeConfigError`."""
    from ropepatch.registry import get_registry

    out: list[Override] = []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        pattern = None
        if "@" in entry:
            pattern, _, entry = entry.partition("@")
            pattern = pattern.strip() or None
        head, sep, rest = entry.partition(":")
        kvs: dict[str, Any] = {}
        if "=" in head and not sep:
            body, method = head, None
        else:
            body, method = rest, head.strip() or None
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            if "=" not in item:
                raise RopeConfigError(
                    f"expected key=value, got {item!r} (syntax: [MODEL@]METHOD[:key=value,...])", path=origin
                )
            k, _, v = item.partition("=")
            kvs[k.strip()] = _parse_value(v)
        if method is not None:
            get_registry().method(method, source=origin, key="method")
            kvs["method"] = method
        out.append(override_from_mapping(kvs, origin, pattern))
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> list[Override]:
    """The overrides in ``$ROPEPATCH`` (none when unset)."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_VAR, "")
    return parse_overrides(text) if text.strip() else []
