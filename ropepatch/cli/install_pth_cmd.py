"""``ropepatch install-pth``: enable ropepatch at start-up in an image whose command line is fixed.

Writes a ``.pth`` file into site-packages that enables ropepatch in every Python process of that
environment, but only while ``ROPEPATCH_AUTOENABLE=1`` is set; see :mod:`ropepatch.launcher.pth`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "install-pth",
        help="install a .pth start-up hook, active only when ROPEPATCH_AUTOENABLE=1",
        description=(
            "Install ropepatch-autoenable.pth into site-packages. Every Python process of that environment "
            "then calls ropepatch.enable() at start-up when ROPEPATCH_AUTOENABLE=1 (overrides from $ROPEPATCH, "
            "switches from ROPEPATCH_KERNELS / ROPEPATCH_STRICT / ROPEPATCH_RUNTIMES), and does nothing otherwise."
        ),
    )
    p.add_argument("--site", metavar="DIR", help="site-packages directory (default: this interpreter's)")
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.launcher.pth import install_pth

    # a missing folder, no permission, a read-only file system: an OSError naming the path, which the CLI's
    # error boundary turns into one line with the fix (exit 2, no traceback)
    path = install_pth(args.site)
    print(f"installed {path}")
    print("active in processes started with ROPEPATCH_AUTOENABLE=1")
    return 0
