"""The environment ``ropepatch run`` hands to its command: overrides, switches, the bootstrap path."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ropepatch.errors import RopeConfigError
from ropepatch.overrides import ENV_VAR, Override, override_from_mapping, parse_overrides

__all__ = [
    "BOOTSTRAP_DIR",
    "ENV_AUTOENABLE",
    "ENV_KERNELS",
    "ENV_LOG",
    "ENV_RUNTIMES",
    "ENV_STRICT",
    "launch_environment",
    "truthy",
]

#: the directory put first on ``PYTHONPATH``; it holds only ``sitecustomize.py`` (and an empty
#: ``__init__.py`` so that packaging ships it), so it shadows nothing else
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "bootstrap"

#: ``1`` enables ropepatch at start-up (the ``.pth`` file needs it; ``0`` opts a process out)
ENV_AUTOENABLE = "ROPEPATCH_AUTOENABLE"
#: ``1``: ``enable(kernels=True)``
ENV_KERNELS = "ROPEPATCH_KERNELS"
#: ``1``: ``enable(strict=True)``, and a process whose start-up enable fails exits with status 2
ENV_STRICT = "ROPEPATCH_STRICT"
#: comma-separated adapter names: ``enable(runtimes=...)``
ENV_RUNTIMES = "ROPEPATCH_RUNTIMES"
#: a logging level (``info``, ``debug``): ropepatch's log goes to stderr in every process
ENV_LOG = "ROPEPATCH_LOG"

_ORIGIN = "ropepatch run"


def truthy(value: str | None) -> bool:
    """``1``/``true``/``yes``/``on`` (any case) are true; everything else, unset included, is false."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def launch_environment(
    overrides: Mapping[str, Any],
    *,
    kernels: bool = False,
    strict: bool = False,
    runtimes: Iterable[str] | None = None,
    log: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a command launched by ``ropepatch run`` gets (``environ`` plus ropepatch's).

    Everything is validated here, so a typo fails before the command starts: the overrides (with
    the closest valid key named), the ``$ROPEPATCH`` already in ``environ``, and ``runtimes``
    against the registered adapters. The overrides are appended to ``$ROPEPATCH`` so they beat
    what it already said; the bootstrap directory is put first on ``PYTHONPATH`` once.
    """
    env = dict(os.environ if environ is None else environ)
    existing = env.get(ENV_VAR, "").strip()
    if existing:
        parse_overrides(existing)  # a bad inherited $ROPEPATCH fails now, not in every child
    override = override_from_mapping(overrides, _ORIGIN)
    if not override.is_empty():
        text = _as_env_text(override)
        env[ENV_VAR] = f"{existing}; {text}" if existing else text
    names = _check_runtimes(runtimes)
    env[ENV_AUTOENABLE] = "1"
    if kernels:
        env[ENV_KERNELS] = "1"
    if strict:
        env[ENV_STRICT] = "1"
    if names is not None:
        env[ENV_RUNTIMES] = ",".join(names)
    if log:
        if log.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise RopeConfigError(f"log level must be debug, info, warning or error, got {log!r}", path=_ORIGIN)
        env[ENV_LOG] = log.lower()
    env["PYTHONPATH"] = _prepend_path(str(BOOTSTRAP_DIR), env.get("PYTHONPATH", ""))
    return env


def _as_env_text(override: Override) -> str:
    """``override`` in ``$ROPEPATCH`` syntax, checked to read back as the same override."""
    text = override.to_env()
    try:
        back = parse_overrides(text, origin=_ORIGIN)
    except RopeConfigError:
        back = []
    same = len(back) == 1 and (back[0].method, back[0].values, back[0].params, back[0].target_context) == (
        override.method,
        override.values,
        override.params,
        override.target_context,
    )
    if not same:
        # a value whose text form does not parse back the same must not reach children altered
        raise RopeConfigError(
            f"cannot pass these overrides to child processes through ${ENV_VAR} (they would read back "
            f"differently: {text!r}); put list-valued parameters such as long_factor in the checkpoint's "
            "config instead",
            path=_ORIGIN,
        )
    return text


def _check_runtimes(runtimes: Iterable[str] | None) -> list[str] | None:
    if runtimes is None:
        return None
    from ropepatch.registry import get_registry

    names = [n.strip() for n in runtimes if n and n.strip()]
    known = sorted(get_registry().adapters)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RopeConfigError(
                f"unknown runtime {name!r}{hint} Known runtimes: {', '.join(known) or '(none registered)'}",
                path=_ORIGIN,
                key="runtimes",
            )
    return names


def _prepend_path(entry: str, current: str) -> str:
    """``entry`` first on a ``PYTHONPATH`` value, without duplicates (a nested ``ropepatch run``).

    Every other entry stays as the user wrote it, empty ones included: Python reads an empty
    entry as the current directory, and a program may rely on importing from there.
    """
    if not current:
        return entry
    real = os.path.realpath(entry)
    rest = [p for p in current.split(os.pathsep) if not p or os.path.realpath(p) != real]
    return os.pathsep.join([entry, *rest])
