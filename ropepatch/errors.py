"""The one exception type that bad checkpoint metadata or bad overrides raise."""

from __future__ import annotations

from typing import Any

__all__ = ["RopeConfigError", "RopepatchWarning", "short_repr"]


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
