"""The probe interface: one runtime's own RoPE computation for a checkpoint config, run here on CPU.

A probe answers one question: given this config (a dict, as in ``config.json``) and a total length,
does the runtime build its rotary embedding, and with which inverse frequencies and cos/sin
attention factor? It is asked twice: once with ropepatch disabled (the runtime on its own) and once
with ropepatch enabled for that runtime (what a user of ``ropepatch.enable()`` gets).

Probes are listed by import path in :data:`PROBES` (like the CLI's verbs); a third party can add
one with :func:`register_probe`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["PROBES", "Computation", "Probe", "iter_probes", "register_probe"]

#: built-in probes, "module:Class"
PROBES: list[str] = [
    "ropepatch.adapters.transformers.probe:TransformersProbe",
    "ropepatch.adapters.exllama.probes:ExLlamaV2Probe",
    "ropepatch.adapters.exllama.probes:ExLlamaV3Probe",
]


@dataclass
class Computation:
    """What a runtime computed (or why it could not).

    ``status`` is ``"ok"`` (built; ``inv_freq`` and ``attention_factor`` are set), ``"fails"`` (the
    runtime raised while loading this config: ``error`` says what) or ``"unsupported"`` (the runtime
    has no code path for this checkpoint at all, e.g. a remote-code architecture: ``error`` says why).
    """

    status: str
    inv_freq: list[float] | None = None
    attention_factor: float | None = None
    error: str | None = None
    detail: str | None = None
    notes: list[str] = field(default_factory=list)
    #: for runtimes whose table is not one frequency vector (per-position tables of dynamic methods):
    #: ``(position, sin row, cos row)`` of the last position, compared with the spec at that position
    row: tuple[int, list[float], list[float]] | None = None

    @property
    def loads(self) -> bool:
        return self.status == "ok"


@runtime_checkable
class Probe(Protocol):
    """One runtime's probe."""

    #: short name shown in reports (``transformers``, ``exllamav2``, ...)
    name: str
    #: the distribution whose installed version is reported
    distribution: str
    #: the ropepatch adapter that patches this runtime (``ropepatch plugins`` name), if any
    adapter: str | None
    #: optional class attribute ``tolerance``: the relative difference that still "matches" (default
    #: ``diagnose.TOLERANCE``; larger for runtimes whose tables are fp16)

    def problem(self) -> str | None:
        """Why this probe cannot run here (runtime not installed, ...), or ``None``."""
        ...

    def version(self) -> str | None:
        """The runtime's installed version."""
        ...

    def compute(self, config: Mapping[str, Any], seq_len: int, *, patched: bool) -> Computation:
        """Run the runtime's RoPE code for ``config`` at total length ``seq_len``.

        ``patched=False``: ropepatch is disabled. ``patched=True``: called inside
        ``ropepatch.temporarily_enabled(...)`` (the caller enables it); the probe takes the path a user's load
        takes, so the adapter sees it.
        """
        ...


_extra: list[Any] = []


def register_probe(probe: Any) -> None:
    """Add a probe object (for plugins and tests)."""
    if not isinstance(probe, Probe):
        raise TypeError(f"{probe!r} does not implement the Probe interface")
    _extra.append(probe)


def iter_probes() -> list[Any]:
    """Every probe: the built-ins that import, then registered ones."""
    out = []
    for path in PROBES:
        module, _, cls = path.partition(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return out + list(_extra)
