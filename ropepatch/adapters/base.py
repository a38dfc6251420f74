"""What a runtime adapter is, in the shape of OpenTelemetry's instrumentors.

An adapter names the distribution it patches and the version range it was tested against,
installs its patches through a :class:`~ropepatch.patching.PatchSet` (so ``disable()`` can restore
them exactly), and never imports its runtime before the user does.
"""

from __future__ import annotations

from typing import Any

from packaging.version import Version

from ropepatch.patching import PatchSet
from ropepatch.versions import installed_version, version_problem

__all__ = ["Adapter"]


class Adapter:
    """Base class of runtime adapters; subclasses set the attributes and implement :meth:`install`."""

    #: short name, shown by ``ropepatch plugins`` and in messages
    name: str = ""
    #: the distribution whose installed version gates the adapter
    distribution: str = ""
    #: the tested range, e.g. ``"transformers>=4.36,<6"``
    requires: str = ""
    #: importing this module triggers installation (the adapter never imports it first)
    trigger: str = ""

    def version(self) -> Version | None:
        """The installed version of the runtime, read from metadata."""
        return installed_version(self.distribution)

    def problem(self) -> str | None:
        """Why the adapter must not patch (outside the tested range, not installed), or ``None``."""
        return version_problem(self.requires) if self.requires else None

    def install(self, patches: PatchSet, runtime: Any) -> None:
        """Patch the runtime (already imported). Raise to abort; the transaction undoes partial work."""
        raise NotImplementedError

    def patch_model(self, model: Any, runtime: Any) -> bool:
        """Fix an already built model in place; return True when this adapter handled it."""
        return False

    def describe(self) -> dict[str, Any]:
        """Facts for ``ropepatch plugins``."""
        v = self.version()
        return {
            "name": self.name,
            "distribution": self.distribution,
            "requires": self.requires,
            "installed": str(v) if v else None,
            "problem": self.problem(),
        }

    def __repr__(self) -> str:
        return f"<ropepatch adapter {self.name!r} ({self.requires})>"
