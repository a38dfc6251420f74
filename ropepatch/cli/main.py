"""``ropepatch`` entry point: dispatches to one module per verb.

A verb module has ``add_parser(subparsers)`` and ``run(args) -> int``. Everything a newcomer can get
wrong is handled here, once, for every verb (present and future):

* :class:`Parser` -- argparse with "did you mean" for a mistyped verb, option or choice, and a
  two-line error (the message, then where help is) instead of a screenful of usage;
* :func:`main` -- the one error boundary: a user error (bad metadata or overrides, a missing or
  unreadable path, the wrong kind of file) ends in one or two lines with the fix and exit status 2;
  anything else in one line and status 1. ``--debug`` (before or after the verb) adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ropepatch.errors import RopeConfigError
from ropepatch.suggest import closest

__all__ = ["VERBS", "Parser", "UsageError", "build_parser", "describe", "main"]

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

#: exit status of a user error (the same as argparse's own)
USAGE = 2


class UsageError(RopeConfigError):
    """A user error a verb detects itself: the message says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.hint = hint


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that suggests the closest option, verb or choice, in two lines.

    Sub-commands get this class too (argparse builds a parser's sub-parsers with its own class).
    """

    _argv: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        """``ropepatch: error: MESSAGE`` and where to read more, exit status 2 (no usage dump)."""
        if message.startswith("the following arguments are required"):
            # `ropepatch --verison` would otherwise only hear that COMMAND is missing
            own = {s for a in self._actions for s in a.option_strings}
            unknown = [w for w in self._argv if w.startswith("-") and w.split("=", 1)[0] not in own]
            if unknown and "--" not in self._argv[: self._argv.index(unknown[0])]:
                message = _unrecognized(unknown, self)
        self.exit(USAGE, f"ropepatch: error: {message}\n  see `{self.prog} --help`\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own check, with the closest choice named (verbs, --as, --api, --dtype, ...)
        choices = action.choices
        if choices is not None and value not in choices:
            names = [str(c) for c in choices]
            hint = _did_you_mean(str(value), names) or f" (choose from {', '.join(names)})"
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint}")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            # argparse reports a sub-command's unknown options at the top level, without the verb:
            # name them against the options of the verb that was actually given
            verb = getattr(ns, "verb", None)
            parser = self._verb_parser(verb) or self
            if verb in self._argv and extras[0] in self._argv[: self._argv.index(verb)]:
                parser = self  # `ropepatch --verison inspect ...`: a mistake in the global options
            parser.error(_unrecognized(extras, parser))
        return ns

    def _verb_parser(self, verb: str | None) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and verb in action.choices:
                parser: argparse.ArgumentParser = action.choices[verb]
                return parser
        return None


def _unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    options = [s for a in parser._actions for s in a.option_strings]
    for word in extras:
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            return f"unrecognized option {name!r}{_did_you_mean(name, options)}"
    return f"unexpected argument {extras[0]!r}"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every verb registered)."""
    from ropepatch import __version__

    parser = Parser(
        prog="ropepatch",
        description="Detect and apply long-context RoPE scaling for any runtime.",
    )
    parser.add_argument("--version", action="version", version=f"ropepatch {__version__}")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for modname in VERBS:
        module = importlib.import_module(modname)
        p = module.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `ropepatch ... | head`
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the one boundary: every error ends in a short message
        code, lines = describe(exc, args)
        if debug:
            traceback.print_exc()
        elif code != USAGE:
            lines.append(f"  rerun with `ropepatch --debug {args.verb} ...` for the traceback")
        print("\n".join(lines), file=sys.stderr)
        return code


def describe(exc: BaseException, args: argparse.Namespace) -> tuple[int, list[str]]:
    """``(exit status, lines)`` for an error a verb raised: status 2 and the fix for a user error."""
    if isinstance(exc, RopeConfigError):
        hint = exc.hint if isinstance(exc, UsageError) else _config_hint(exc)
        return USAGE, [f"ropepatch: error: {exc}", *([f"  hint: {hint}"] if hint else [])]
    if isinstance(exc, OSError) and (exc.filename or isinstance(exc, FileNotFoundError | PermissionError)):
        # a path the user gave that is missing, unreadable or not writable
        where = f": {exc.filename}" if exc.filename else ""
        what = exc.strerror or str(exc)
        hint = _path_hint(exc, args)
        return USAGE, [f"ropepatch: error: {what}{where}", *([f"  hint: {hint}"] if hint else [])]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return 1, [f"ropepatch: error: {type(exc).__name__}{': ' + first if first else ''}"]


def _config_hint(exc: RopeConfigError) -> str | None:
    path = exc.path or ""
    if path.endswith(".gguf") and "GGUF" in exc.reason:
        return "the file is cut short or is not a GGUF file: compare its size with the original's, or point at the checkpoint's config.json"
    return None


def _path_hint(exc: OSError, args: argparse.Namespace) -> str | None:
    if getattr(args, "verb", None) in ("install-pth", "uninstall-pth"):
        import sysconfig

        default = Path(sysconfig.get_paths()["purelib"])
        if isinstance(exc, PermissionError):
            return f"run as a user who may write there, or pick another --site (default: {default})"
        return f"--site takes an existing site-packages folder; leave it out for this Python's ({default})"
    if isinstance(exc, PermissionError):
        return "check the file's permissions"
    return "check the path (ropepatch reads local files and folders only)"


if __name__ == "__main__":
    sys.exit(main())
