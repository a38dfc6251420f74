"""Run a command with ropepatch enabled in it and in every Python process it starts.

This is OpenTelemetry's ``opentelemetry-instrument`` recipe: ``ropepatch run`` validates the
overrides, writes them to the environment (``$ROPEPATCH`` and a few ``ROPEPATCH_*`` switches),
puts :data:`BOOTSTRAP_DIR` (which holds nothing but a ``sitecustomize.py``) first on
``PYTHONPATH`` and replaces itself with the command. Every Python interpreter started below it
(TGI's shards, vLLM's engine core and workers, ``multiprocessing`` children) imports that
``sitecustomize`` at start-up, which runs the user's own ``sitecustomize`` (if any) and then
``ropepatch.enable()``.

For images whose command line cannot change, :mod:`ropepatch.launcher.pth` installs a ``.pth``
file that does the same, but only while ``ROPEPATCH_AUTOENABLE=1``.
"""

from __future__ import annotations

from ropepatch.launcher.environment import (
    BOOTSTRAP_DIR,
    ENV_AUTOENABLE,
    ENV_KERNELS,
    ENV_LOG,
    ENV_RUNTIMES,
    ENV_STRICT,
    launch_environment,
)

__all__ = [
    "BOOTSTRAP_DIR",
    "ENV_AUTOENABLE",
    "ENV_KERNELS",
    "ENV_LOG",
    "ENV_RUNTIMES",
    "ENV_STRICT",
    "launch_environment",
]
