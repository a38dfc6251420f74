"""An opt-in ``.pth`` start-up hook, for images whose command line cannot change.

``ropepatch install-pth`` writes :data:`PTH_NAME` into a site-packages directory. Python runs its
one line in every interpreter that uses that directory; the line reads one environment variable
and does nothing more unless ``ROPEPATCH_AUTOENABLE`` is ``1`` (or true/yes/on), so installing it
costs an unconfigured process nothing and changes nothing.
"""

from __future__ import annotations

import errno
import os
import sysconfig
from pathlib import Path

from ropepatch.atomic import atomic_write
from ropepatch.launcher.environment import ENV_AUTOENABLE

__all__ = ["PTH_LINE", "PTH_NAME", "default_site_dir", "install_pth", "uninstall_pth"]

PTH_NAME = "ropepatch-autoenable.pth"

#: ``site`` executes a .pth line that starts with ``import``; everything must fit on that line
PTH_LINE = (
    f"import os; os.environ.get({ENV_AUTOENABLE!r}, '').strip().lower() in ('1', 'true', 'yes', 'on') "
    "and __import__('ropepatch.launcher.boot', fromlist=['autoenable']).autoenable()\n"
)
_HEADER = (
    "# ropepatch: enables ropepatch at start-up when ROPEPATCH_AUTOENABLE=1 (ropepatch uninstall-pth removes it)\n"
)


def default_site_dir() -> Path:
    """The running interpreter's site-packages (``purelib``; a venv's own when run from one)."""
    return Path(sysconfig.get_paths()["purelib"])


def install_pth(site_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the ``.pth`` file into ``site_dir`` (default: :func:`default_site_dir`); return its path."""
    folder = Path(site_dir) if site_dir is not None else default_site_dir()
    if not folder.is_dir():
        # errno and filename set: the CLI reports it as a path the user can fix (one line, exit 2)
        raise NotADirectoryError(errno.ENOTDIR, "no such site-packages directory", str(folder))
    # a private temporary file renamed over the name: never a half-written line for a process
    # starting now, and never a write through a symlink planted at the .pth or temporary name
    return atomic_write(folder / PTH_NAME, _HEADER + PTH_LINE, perms=0o644)


def uninstall_pth(site_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Remove the ``.pth`` file from ``site_dir``; return its path, or ``None`` if it was not there."""
    folder = Path(site_dir) if site_dir is not None else default_site_dir()
    path = folder / PTH_NAME
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
