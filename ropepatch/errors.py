"""The one exception type that bad checkpoint metadata or bad overrides raise."""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["OVERRIDE_ORIGINS", "RopeConfigError", "RopeConfigKeyError", "RopepatchWarning", "locate", "short_repr"]

#: the ``origin`` labels of override layers; a spec's provenance names them for overridden values
OVERRIDE_ORIGINS = ("explicit", "env ROPEPATCH", "per-model mapping", "ropepatch run", "webui panel", "--variant ")
# "config.json:rope_scaling.factor", "dict:rope_theta", "model.gguf:llama.rope.freq_base"
_LABELLED_KEY = re.compile(r"([^\s:]+):(\S+)")


class RopeConfigError(ValueError):
    """Checkpoint metadata or an override that ropepatch cannot turn into a correct spec.

    The message always says which file (or source) and which key were at fault, and how to
    fix it; ``path`` and ``key`` carry the same facts for programs.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.reason = message
        prefix = []
        if path:
            prefix.append(str(path))
        if key is not None:  # an empty key is still a key (GGUF allows one)
            prefix.append(f"key {key!r}")
        full = f"{': '.join(prefix)}: {message}" if prefix else message
        super().__init__(full)

    @classmethod
    def at(
        cls, message: str, *, field: str | None, where: str | None, path: str | None = None, label: str | None = None
    ) -> RopeConfigError:
        """An error about spec value ``field`` whose provenance is ``where`` (see :func:`locate`)."""
        path, key, note = locate(where, field, path, label)
        return cls(f"{message} ({note})" if note else message, path=path, key=key)

    def relabel(self, path: str) -> None:
        """Name the source (``<dict>``, a config class) of an error raised without one."""
        self.path = path
        prefix = [path] + ([f"key {self.key!r}"] if self.key is not None else [])
        self.args = (f"{': '.join(prefix)}: {self.reason}",)


def locate(
    where: str | None, field: str | None, path: str | None = None, label: str | None = None
) -> tuple[str | None, str | None, str]:
    """``(path, key, note)`` for an error about value ``field`` whose provenance string is ``where``.

    Provenance strings come in three forms. ``LABEL:KEY`` (a key of the file or dict ``LABEL``):
    the key is ``KEY``, and a dict or config object without a path is named ``<LABEL>``. An
    override origin (``explicit``, ``env ROPEPATCH``, ...): the error is the override's, so its
    path is that origin and its key the override key. Anything else (a default, a value derived
    from two keys, the known-checkpoint table) has no single key: ``key`` is ``None`` and the
    note, which the message must carry, says where the value came from. ``label`` is the source's
    label when known (a file name may hold spaces or colons); else it is the file name of ``path``.
    """
    if not where:
        return path, field, ""
    label = label or (os.path.basename(path) if path else None)
    rest = where[len(label) + 1 :] if label and where.startswith(f"{label}:") else None
    if rest and not any(c.isspace() for c in rest):  # "dict:hidden_size / dict:num_heads" is no key
        return path or f"<{label}>", rest, ""
    match = _LABELLED_KEY.fullmatch(where)
    if match is not None and not where.startswith(OVERRIDE_ORIGINS):
        return path or f"<{match.group(1)}>", match.group(2), ""
    if where.startswith(OVERRIDE_ORIGINS):
        origin, _, detail = where.partition(": ")
        key = "target_context" if detail.startswith("target_context") else field
        return origin, key, ""
    return path, None, f"{field} came from {where}" if field else f"from {where}"


class RopeConfigKeyError(RopeConfigError, KeyError):
    """A :class:`RopeConfigError` for a required key that is missing; also a :class:`KeyError`.

    transformers' rope-type validators raise ``KeyError`` for a missing required key, and code (and
    transformers' own tests) catch exactly that; ropepatch's validators keep the contract.
    """

    def __str__(self) -> str:
        # KeyError's own __str__ would print the message as a quoted repr
        return Exception.__str__(self)


class RopepatchWarning(UserWarning):
    """A contradiction in metadata that ropepatch resolved; the message says which value won."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    Hostile metadata can hold integers of thousands of digits (whose repr raises past Python's
    digit limit), megabyte strings or objects whose repr fails; the message must survive all of them.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not replace the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
