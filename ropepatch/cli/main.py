"""``ropepatch`` entry point: dispatches to one module per verb.

A verb module has ``add_parser(subparsers)`` and ``run(args) -> int``. Bad metadata or overrides
end in one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ropepatch.errors import RopeConfigError

__all__ = ["VERBS", "build_parser", "main"]

VERBS: tuple[str, ...] = (
    "ropepatch.cli.inspect_cmd",
    "ropepatch.cli.fix_cmd",
    "ropepatch.cli.methods_cmd",
    "ropepatch.cli.plugins_cmd",
    "ropepatch.cli.run_cmd",
    "ropepatch.cli.install_pth_cmd",
    "ropepatch.cli.uninstall_pth_cmd",
    "ropepatch.cli.eval_cmd",
    "ropepatch.cli.doctor_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every verb registered)."""
    from ropepatch import __version__

    parser = argparse.ArgumentParser(
        prog="ropepatch",
        description="Detect and apply long-context RoPE scaling for any runtime.",
    )
    parser.add_argument("--version", action="version", version=f"ropepatch {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for modname in VERBS:
        module = importlib.import_module(modname)
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except RopeConfigError as exc:
        print(f"ropepatch: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
