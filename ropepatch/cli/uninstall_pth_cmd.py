"""``ropepatch uninstall-pth``: remove the start-up hook ``ropepatch install-pth`` wrote."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("uninstall-pth", help="remove the .pth start-up hook")
    p.add_argument("--site", metavar="DIR", help="site-packages directory (default: this interpreter's)")
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.launcher.pth import uninstall_pth

    try:
        path = uninstall_pth(args.site)
    except OSError as exc:  # no permission, a folder in the way: one line, no traceback
        print(f"ropepatch: error: cannot remove the .pth file: {exc}", file=sys.stderr)
        return 2
    print(f"removed {path}" if path else "nothing to remove: no ropepatch .pth file there")
    return 0
