"""``ropepatch doctor``: what each installed runtime computes for a checkpoint, on its own and with ropepatch.

A *probe* (:class:`~ropepatch.doctor.probe.Probe`) runs one runtime's own RoPE code for a config on
CPU; :func:`~ropepatch.doctor.diagnose.diagnose` compares what it computes with the reference
:class:`~ropepatch.RopeSpec`. Nothing here imports a runtime until a probe runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ropepatch.doctor.diagnose import diagnose

__all__ = ["diagnose"]


def __getattr__(name: str) -> Any:
    if name == "diagnose":
        from ropepatch.doctor.diagnose import diagnose

        return diagnose
    raise AttributeError(name)
