"""The one exception type that bad checkpoint metadata or bad overrides raise."""

from __future__ import annotations

__all__ = ["RopeConfigError", "RopepatchWarning"]


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
        if key:
            prefix.append(f"key {key!r}")
        full = f"{': '.join(prefix)}: {message}" if prefix else message
        super().__init__(full)


class RopepatchWarning(UserWarning):
    """A contradiction in metadata that ropepatch resolved; the message says which value won."""
