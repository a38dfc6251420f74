"""Installed runtime versions, read from distribution metadata, never by importing the runtime.

The version policy itself (a floor, a tested-up-to version, probes) is the adapters' base class's:
see :class:`ropepatch.adapters.base.Adapter`.
"""

from __future__ import annotations

import importlib.metadata

from packaging.version import InvalidVersion, Version

__all__ = ["installed_version"]


def installed_version(distribution: str) -> Version | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed."""
    try:
        return Version(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:
        return None
    except InvalidVersion:
        return None
