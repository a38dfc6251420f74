"""Version gates read from distribution metadata, never by importing the runtime."""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

__all__ = ["installed_version", "installed_version_text", "version_problem"]


def installed_version_text(distribution: str) -> str | None:
    """The version string ``distribution``'s metadata declares, parsable or not; ``None`` when not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_version(distribution: str) -> Version | None:
    """The installed version of ``distribution``; ``None`` when it is not installed or its version does not parse."""
    text = installed_version_text(distribution)
    try:
        return Version(text) if text is not None else None
    except InvalidVersion:
        return None


def version_problem(requirement: str, version: Version | None = None) -> str | None:
    """Why ``requirement`` (e.g. ``"transformers>=4.36,<6"``) is not met, or ``None`` when it is."""
    req = Requirement(requirement)
    if version is None:
        version = installed_version(req.name)
    if version is None:
        text = installed_version_text(req.name)
        if text is not None:  # installed, but a local build's version is not PEP 440 (e.g. "main-abc123")
            return f"{req.name} {text!r} is installed, but its version does not parse, so {req.specifier} cannot be checked"
        return f"{req.name} is not installed"
    # compare release numbers so that dev/rc builds of a tested release count as that release
    if not req.specifier.contains(Version(version.base_version), prereleases=True):
        return f"{req.name} {version} is outside the tested range {req.specifier}"
    return None
