"""Python processes ``ropepatch run`` cannot reach: ``python -I``, ``-E`` and ``-S``, found and reported.

``ropepatch run`` reaches a Python process through ``PYTHONPATH`` (its bootstrap
``sitecustomize``). Three interpreter options take that path away:

* ``-E`` ignores every ``PYTHON*`` variable, ``PYTHONPATH`` included; ``-I`` (isolated) implies
  ``-E`` and also skips the user site directory;
* ``-S`` skips the ``site`` module: no ``sitecustomize`` and no ``.pth`` file runs at all.

An ``-I``/``-E`` process still runs the ``.pth`` files of its interpreter's site-packages, and
still sees ``ROPEPATCH_AUTOENABLE`` (only ``PYTHON*`` variables are ignored), so the hook of
``ropepatch install-pth`` reaches it. Nothing reaches an ``-S`` process at start-up.

Rather than let such a process serve a model unpatched with exit status 0, ropepatch looks at each
Python command before it starts: the command ``ropepatch run`` itself runs, and every process a
reached Python process starts (an audit hook on ``subprocess.Popen``, ``os.exec*``,
``os.posix_spawn*`` and ``os.spawn*``). An unreachable one gets one line on stderr; with
``ROPEPATCH_STRICT=1`` (``ropepatch run --strict``) it is not started: ``ropepatch run`` exits 2,
and the ``Popen``/``exec`` call in the parent raises :class:`UnreachedChildError`. Processes
started by a program that is not Python (a shell script, a Rust launcher) are not seen; for those,
install the ``.pth`` hook in the interpreter they run.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ropepatch.launcher.environment import ENV_AUTOENABLE, ENV_STRICT, truthy

__all__ = ["UnreachedChildError", "install_child_guard", "interpreter_options", "report_unreached", "unreached_reason"]

# python, python3, python3.11, python3.13t, python3.11d, pypy3 (and .exe on Windows)
_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?[dmt]*(\.exe)?$", re.IGNORECASE)
# options whose value is the next word, or the rest of the same word (-Wignore, -Xdev)
_WITH_VALUE = frozenset("WX")
_LONG_WITH_VALUE = frozenset({"--check-hash-based-pycs"})


class UnreachedChildError(RuntimeError):
    """A Python process ropepatch cannot enable itself in was about to start under ``ROPEPATCH_STRICT=1``."""


def interpreter_options(argv: Sequence[str]) -> set[str]:
    """The single-letter options of a Python command line (``argv[0]`` is the interpreter).

    Parsing stops where Python's does: at the script, ``-c``/``-m`` (whose argument is the program),
    ``-`` or ``--``. ``-IS`` gives ``{"I", "S"}``; ``-W error`` and ``-Xdev`` consume their values.
    """
    found: set[str] = set()
    words = list(argv[1:])
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not isinstance(word, str) or word in ("-", "--") or not word.startswith("-"):
            break
        if word.startswith("--"):
            if word in _LONG_WITH_VALUE:
                i += 1
            continue
        letters = word[1:]
        for j, letter in enumerate(letters):
            if letter in "cm":
                return found  # the rest is the program and its arguments
            if letter in _WITH_VALUE:
                if j == len(letters) - 1:
                    i += 1  # the value is the next word
                break
            found.add(letter)
    return found


def _resolve(executable: str | None, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The absolute path of the program a spawn call will run (as the OS looks it up)."""
    given = executable if executable else (argv[0] if argv else None)
    if not isinstance(given, (str, bytes, os.PathLike)):
        return None
    name = os.fsdecode(given)
    if os.sep in name or (os.altsep and os.altsep in name):
        return os.path.abspath(name)
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    return os.path.abspath(found) if found else None


def _is_python(path: str | None) -> bool:
    if path is None:
        return False
    if _PYTHON_NAME.match(os.path.basename(path)):
        return True
    try:
        return os.path.realpath(path) == os.path.realpath(sys.executable)
    except (OSError, ValueError):
        return False


def _site_dirs_of(executable: str, options: set[str]) -> list[Path]:
    """The site-packages folders whose ``.pth`` files ``executable`` runs at start-up (best effort)."""
    import site

    if os.path.abspath(executable) == os.path.abspath(sys.executable):
        own = [Path(d) for d in site.getsitepackages()]
        if not options & {"I", "s"} and site.ENABLE_USER_SITE:
            own.append(Path(site.getusersitepackages()))
        return own
    # another interpreter: its prefix is the folder above bin/ (a venv's pyvenv.cfg may add the base's)
    prefixes = [Path(executable).parent.parent]
    cfg = prefixes[0] / "pyvenv.cfg"
    try:
        settings = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition("=") for line in cfg.read_text(encoding="utf-8").splitlines())
        )
    except (OSError, UnicodeDecodeError):
        settings = {}
    if settings.get("include-system-site-packages", "").lower() == "true" and settings.get("home"):
        prefixes.append(Path(settings["home"]).parent)
    dirs: list[Path] = []
    for prefix in prefixes:
        dirs += sorted(prefix.glob("lib/python3*/site-packages")) + [prefix / "Lib" / "site-packages"]
    return dirs


def unreached_reason(executable: str | None, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """Why ropepatch will not be enabled in this Python command, or ``None`` when it will (or it is not Python).

    ``env`` is the environment the command gets (default: this process's). A command whose
    environment says ``ROPEPATCH_AUTOENABLE`` is not on asked not to be enabled: not reported.
    """
    from ropepatch.launcher.pth import PTH_NAME

    env = os.environ if env is None else env
    if not truthy(env.get(ENV_AUTOENABLE)):
        return None
    path = _resolve(executable, argv, env)
    if not _is_python(path):
        return None
    assert path is not None
    options = interpreter_options(argv)
    if "S" in options:
        return "-S skips the site module: neither ropepatch run's sitecustomize nor a .pth file runs in it"
    blind = sorted(options & {"I", "E"})
    if not blind:
        return None
    if any((d / PTH_NAME).is_file() for d in _site_dirs_of(path, options)):
        return None  # the .pth hook runs in it and sees ROPEPATCH_AUTOENABLE (not a PYTHON* variable)
    flags = " and ".join(f"-{f}" for f in blind)
    return (
        f"{flags} ignores PYTHONPATH, where ropepatch run's start-up hook lives; drop {flags}, or install "
        f"the hook into that interpreter's site-packages: {path} -m ropepatch install-pth"
    )


def report_unreached(command: Sequence[str], reason: str, *, strict: bool) -> None:
    """One line on stderr naming the command and why; raises :class:`UnreachedChildError` when ``strict``."""
    shown = " ".join(str(a) for a in command[:4]) + (" ..." if len(command) > 4 else "")
    if strict:
        raise UnreachedChildError(
            f"ropepatch: refusing to start {shown!r} unpatched under ROPEPATCH_STRICT=1: {reason}"
        )
    sys.stderr.write(f"ropepatch: warning: {shown!r} will run without ropepatch: {reason}\n")
    sys.stderr.flush()


# -- the audit hook in every reached process ------------------------------------------------------
_installed = False
_reported: set[tuple[str, ...]] = set()


def _spawn_call(event: str, args: tuple[Any, ...]) -> tuple[str | None, Sequence[str], Mapping[str, str] | None]:
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        executable, argv, _cwd, env = args
        if isinstance(argv, (str, bytes, os.PathLike)):
            argv = [argv]
        return executable, [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else a for a in argv], env
    if event == "os.spawn":  # (mode, path, args, env)
        _mode, path, argv, env = args
    else:  # os.exec, os.posix_spawn: (path, args, env)
        path, argv, env = args
    return os.fsdecode(path), [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else a for a in argv], env


def _environment(env: Any) -> Mapping[str, str]:
    if env is None:
        return os.environ
    try:
        return {os.fsdecode(k): os.fsdecode(v) for k, v in dict(env).items()}
    except (TypeError, ValueError):
        return os.environ


_EVENTS = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS:
        return
    try:
        executable, argv, env = _spawn_call(event, args)
        child_env = _environment(env)
        reason = unreached_reason(executable, argv, child_env)
        if reason is None:
            return
        strict = truthy(child_env.get(ENV_STRICT))
        key = (str(executable), *map(str, argv[:1]), *sorted(interpreter_options(argv)))
        if not strict and key in _reported:
            return
        _reported.add(key)
    except Exception:  # noqa: BLE001 - a spawn must never fail because ropepatch misread its arguments
        return
    report_unreached(argv, reason, strict=strict)


def install_child_guard() -> None:
    """Report (or, under ``ROPEPATCH_STRICT=1``, refuse) unreachable Python children of this process.

    Installed once per process by the start-up hook; audit hooks cannot be removed, so the hook
    does nothing for any event but process creation.
    """
    global _installed
    if _installed:
        return
    _installed = True
    sys.addaudithook(_audit)
