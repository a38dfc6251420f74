"""What runs at interpreter start-up under ``ropepatch run`` or the ``.pth`` file: ``enable()``.

Configuration comes from the environment only (see :mod:`ropepatch.launcher.environment`).
A failure never breaks the process it runs in, unless ``ROPEPATCH_STRICT=1``: then the process
exits with status 2 and one line saying why, rather than serving a model with the wrong RoPE.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ropepatch.launcher.environment import ENV_KERNELS, ENV_LOG, ENV_RUNTIMES, ENV_STRICT, truthy

__all__ = ["autoenable"]


def _log_to_stderr(level: str) -> None:
    """Servers configure their own logging (TGI: loguru); ropepatch's own log gets a stderr handler."""
    import logging

    log = logging.getLogger("ropepatch")
    if not any(getattr(h, "_ropepatch", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(name)s[{os.getpid()}] %(levelname)s %(message)s"))
        handler._ropepatch = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(getattr(logging, level.strip().upper(), logging.INFO))


@contextmanager
def _all_site_dirs() -> Iterator[None]:
    """Make every site-packages importable while enabling, then leave ``sys.path`` to ``site``.

    A ``.pth`` line runs while ``site`` is still adding directories: in a venv with system site
    packages, ropepatch's dependencies (pluggy) may live in a directory not on ``sys.path`` yet.
    """
    import site

    try:
        missing = [d for d in site.getsitepackages() if d not in sys.path and os.path.isdir(d)]
    except AttributeError:  # some embedded/old virtualenv site modules lack it
        missing = []
    sys.path.extend(missing)
    try:
        yield
    finally:
        for d in missing:
            if d in sys.path:
                sys.path.remove(d)  # site adds it in its proper place right after


def autoenable(environ: Mapping[str, str] | None = None) -> bool:
    """Call ``ropepatch.enable()`` as the environment says; return whether ropepatch is enabled."""
    env = os.environ if environ is None else environ
    if env.get(ENV_LOG):
        _log_to_stderr(env[ENV_LOG])
    strict = truthy(env.get(ENV_STRICT))
    if environ is None:
        # the Python processes this one starts with -I/-E/-S would miss the start-up hook: report them
        from ropepatch.launcher.children import install_child_guard

        install_child_guard()
    runtimes = [n.strip() for n in env.get(ENV_RUNTIMES, "").split(",") if n.strip()] or None
    try:
        with _all_site_dirs():
            from ropepatch.runtime import enable

            enable(kernels=truthy(env.get(ENV_KERNELS)), strict=strict, runtimes=runtimes)
    except Exception as exc:  # noqa: BLE001 - start-up code must not take the process down
        message = f"ropepatch: not enabled in process {os.getpid()}: {type(exc).__name__}: {exc}\n"
        sys.stderr.write(message)
        if strict:
            # site.py swallows exceptions from start-up hooks, and SystemExit there ends in a "Fatal
            # Python error" with a traceback; at start-up there is nothing to clean up, so leave now
            sys.stderr.flush()
            os._exit(2)
        return False
    return True
