"""``ropepatch run [OVERRIDES] -- COMMAND ...``: run COMMAND with ropepatch enabled in every Python process.

The overrides are checked before COMMAND starts (a mistake exits with status 2 and one line
naming it), then handed down through the environment; see :mod:`ropepatch.launcher`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Any

from ropepatch.cli.overrides_args import add_override_args, overrides_from_args

__all__ = ["add_parser", "run"]

_SHOWN = (
    "ROPEPATCH",
    "ROPEPATCH_AUTOENABLE",
    "ROPEPATCH_KERNELS",
    "ROPEPATCH_STRICT",
    "ROPEPATCH_RUNTIMES",
    "ROPEPATCH_LOG",
    "PYTHONPATH",
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run a command with ropepatch enabled in it and every Python process it starts",
        description=(
            "Run COMMAND with ropepatch enabled in every Python process below it (a server's shards and "
            "workers included), like opentelemetry-instrument: the overrides travel in $ROPEPATCH and a "
            "bootstrap sitecustomize goes first on PYTHONPATH. Put -- before COMMAND."
        ),
        epilog="example: ropepatch run --method yarn --factor 4 --original 32768 -- text-generation-launcher --model-id ...",
    )
    add_override_args(p)
    p.add_argument("--kernels", action="store_true", help="enable(kernels=True) in every process")
    p.add_argument(
        "--strict",
        action="store_true",
        help="enable(strict=True) everywhere: bad settings stop a process at start-up (status 2), a checkpoint whose RoPE cannot be served stops the model load",
    )
    p.add_argument("--runtimes", help="comma-separated adapters to install (default: all; see `ropepatch plugins`)")
    p.add_argument(
        "--log", metavar="LEVEL", help="ropepatch's log to stderr in every process (info shows each patched layer)"
    )
    p.add_argument("--print-env", action="store_true", help="print the variables COMMAND would get and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run")
    return p


def run(args: argparse.Namespace) -> int:
    from ropepatch.launcher import launch_environment

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    runtimes = args.runtimes.split(",") if args.runtimes else None
    # validation first: nothing runs with overrides that a child would reject
    overrides = overrides_from_args(args)
    env = launch_environment(overrides, kernels=args.kernels, strict=args.strict, runtimes=runtimes, log=args.log)
    if args.print_env:
        for key in _SHOWN:
            if key in env:
                print(f"{key}={shlex.quote(env[key])}")
        return 0
    if not command:
        print("ropepatch: error: run needs a command after --, e.g. ropepatch run -- python serve.py", file=sys.stderr)
        return 2
    command = _llamacpp_hook(command, overrides)
    from ropepatch.launcher.children import UnreachedChildError, report_unreached, unreached_reason

    reason = unreached_reason(None, command, env)
    if reason is not None:  # python -I/-E/-S: the start-up hook cannot reach it
        try:
            report_unreached(command, reason, strict=args.strict)
        except UnreachedChildError as exc:
            print(f"ropepatch: error: {str(exc).removeprefix('ropepatch: ')}", file=sys.stderr)
            return 2
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "posix":  # no exec on Windows: wait for the child and pass its status on
        try:
            return subprocess.call(command, env=env)
        except FileNotFoundError:
            return _not_found(command[0])
    try:
        os.execvpe(command[0], command, env)  # the command takes over this process (signals, pid)
    except FileNotFoundError:
        return _not_found(command[0])
    except PermissionError as exc:
        print(f"ropepatch: error: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 126
    return 0  # not reached


def _llamacpp_hook(command: list[str], overrides: dict[str, Any]) -> list[str]:
    """A llama.cpp binary is not Python: its GGUF's scaling goes onto its command line instead."""
    from ropepatch.launcher.llamacpp import is_llamacpp_binary, llamacpp_command

    if not is_llamacpp_binary(command[0]):
        return command
    result = llamacpp_command(command, overrides)
    print(result.report(), file=sys.stderr)
    return result.argv


def _not_found(name: str) -> int:
    print(f"ropepatch: error: command not found: {name!r}", file=sys.stderr)
    return 127
