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
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ropepatch.errors import RopeConfigError, short_repr

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
        """This override in ``ROPEPATCH`` syntax (the launcher passes overrides this way).

        ``parse_overrides(o.to_env())`` gives back ``[o]`` for every override ``parse_overrides`` or
        ``override_from_mapping`` built.
        """
        items = {**self.values, **self.params}
        if self.target_context is not None:
            items["target_context"] = self.target_context
        body = ",".join(f"{k}={_format(v)}" for k, v in items.items())
        head = self.method or ""
        text = f"{head}:{body}" if head and body else head or body
        if self.pattern and any(c in self.pattern for c in "@;"):
            raise RopeConfigError(
                f"model pattern {self.pattern!r} cannot be written in {ENV_VAR} syntax ('@' and ';' separate entries)",
                path=self.origin,
                key="pattern",
            )
        return f"{self.pattern}@{text}" if self.pattern else text


def _format(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return json.dumps([_plain(x) for x in v], separators=(",", ":"))
    return str(v)


def _plain(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def _split_top(text: str, sep: str) -> list[str]:
    """``text.split(sep)``, except inside ``[...]`` and JSON strings (a list value holds commas)."""
    parts, depth, start, quoted, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"' and depth:
            quoted = True
        elif ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        elif ch == sep and not depth:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_value(raw: str, key: str | None = None, origin: str | None = None) -> Any:
    """A ``ROPEPATCH`` / ``--set`` value: true/false, none, an int, a float, a JSON list, else the text."""
    text = raw.strip()
    if not text.isascii() and any(c.isdigit() or c.isnumeric() for c in text):
        # int()/float() read any Unicode digit ('٤', '４', '𝟒'); ROPEPATCH numbers are ASCII only,
        # so that what a shell, a log and a reviewer see is the number ropepatch uses
        raise RopeConfigError(
            f"numbers must be written with ASCII digits 0-9, got {short_repr(text, 40)}", path=origin, key=key
        )
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:  # not an int (or more digits than Python converts): maybe a float
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("["):
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge ints, absurd nesting
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise RopeConfigError(
                f"malformed list {short_repr(text, 40)} ({reason}); write e.g. [1.0,1.5,2.0]", path=origin, key=key
            ) from None
    return text


def _unknown_key(key: Any, origin: str, keys: set[str]) -> RopeConfigError:
    name = key if isinstance(key, str) else short_repr(key)
    close = difflib.get_close_matches(name, sorted(keys), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return RopeConfigError(
        f"unknown override key {name!r}{hint} Valid keys: {', '.join(sorted(keys))}", path=origin, key=name
    )


_FLOAT_KEYS = {"factor", "rope_theta"}
_INT_KEYS = {"original_max_position_embeddings", "max_position_embeddings", "rotary_dim", "head_dim", "target_context"}


def _common_value(canon: str, key: str, value: Any, origin: str) -> float | int:
    """A common override value checked now (a typo in a number must fail before any model loads)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float64
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise RopeConfigError(f"must be a finite positive number, got {short_repr(value)}", path=origin, key=key)
    if canon in _INT_KEYS:
        if not (isinstance(value, int) or number.is_integer()):
            raise RopeConfigError(f"must be a positive whole number, got {short_repr(value)}", path=origin, key=key)
        if canon != "rotary_dim" and canon != "head_dim":
            _within(canon, key, number, origin)
        return int(value)
    if canon == "factor":
        _within(canon, key, number, origin)
    return number


def _within(canon: str, key: str, number: float, origin: str) -> None:
    """Contexts and factors beyond what any model uses are refused here (see ``ropepatch.spec``)."""
    from ropepatch.spec import MAX_CONTEXT, MAX_FACTOR

    limit, what = (MAX_FACTOR, "a factor") if canon == "factor" else (MAX_CONTEXT, "a context (tokens)")
    if number > limit:
        raise RopeConfigError(f"{number:g} is beyond any real model: {what} is at most {limit:g}", path=origin, key=key)


def _param_value(key: str, value: Any, origin: str) -> Any:
    """A method parameter checked against the kind every method that declares it expects."""
    from ropepatch.methods.base import _coerce
    from ropepatch.registry import get_registry

    first: RopeConfigError | None = None
    for method in get_registry().iter_methods():
        for p in method.params:
            if p.name != key:
                continue
            try:
                coerced = _coerce(p, value, origin, key)
            except RopeConfigError as exc:
                first = first or exc
                continue
            return list(coerced) if isinstance(coerced, tuple) else coerced
    if first is not None:
        raise first
    return value


def override_from_mapping(mapping: Mapping[str, Any], origin: str, pattern: str | None = None) -> Override:
    """An :class:`Override` from keyword arguments or a per-model dict (strictly checked)."""
    from ropepatch.registry import get_registry

    if not isinstance(mapping, Mapping):
        raise RopeConfigError(
            f"overrides must be a mapping of key to value, got {type(mapping).__name__}", path=origin, key=pattern
        )
    if pattern is not None and not isinstance(pattern, str):
        raise RopeConfigError(f"a model pattern must be a string, got {short_repr(pattern)}", path=origin)
    keys = valid_keys()
    out = Override(origin=origin, pattern=pattern)
    given: dict[str, str] = {}  # canonical name -> the key that set it (aliases must not collide)
    for key, value in mapping.items():
        if value is None:
            continue
        if not isinstance(key, str) or key not in keys:
            raise _unknown_key(key, origin, keys)
        canon = COMMON_KEYS.get(key, key)
        if canon in given:
            raise RopeConfigError(f"set twice (as {given[canon]!r} and {key!r}); give it once", path=origin, key=key)
        given[canon] = key
        if canon == "method":
            if not isinstance(value, str):
                raise RopeConfigError(f"must be a method name, got {short_repr(value)}", path=origin, key=key)
            out.method = get_registry().method(value, source=origin, key=key).name
        elif canon == "target_context":
            out.target_context = int(_common_value(canon, key, value, origin))
        elif key in COMMON_KEYS:
            out.values[canon] = _common_value(canon, key, value, origin)
        else:
            out.params[key] = _param_value(key, value, origin)
    return out


def parse_overrides(text: str, origin: str = f"env {ENV_VAR}") -> list[Override]:
    """Parse ``ROPEPATCH`` syntax into overrides; every mistake is a :class:`RopeConfigError`."""
    from ropepatch.registry import get_registry

    if not isinstance(text, str):
        raise RopeConfigError(f"overrides must be text, got {type(text).__name__}", path=origin)
    out: list[Override] = []
    for entry in (e.strip() for e in _split_top(text, ";")):
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
        for item in (i.strip() for i in _split_top(body, ",")):
            if not item:
                continue
            if "=" not in item:
                raise RopeConfigError(
                    f"expected key=value, got {short_repr(item, 40)} (syntax: [MODEL@]METHOD[:key=value,...])",
                    path=origin,
                    key=item,
                )
            k, _, v = item.partition("=")
            k = k.strip()
            if k in kvs:
                raise RopeConfigError(f"given twice in {short_repr(entry, 60)}", path=origin, key=k)
            kvs[k] = _parse_value(v, key=k, origin=origin)
        if method is not None:
            if "method" in kvs:
                raise RopeConfigError(f"method given twice ({method!r} and method=...)", path=origin, key="method")
            get_registry().method(method, source=origin, key="method")
            kvs["method"] = method
        out.append(override_from_mapping(kvs, origin, pattern))
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> list[Override]:
    """The overrides in ``$ROPEPATCH`` (none when unset)."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_VAR, "")
    return parse_overrides(text) if text.strip() else []
