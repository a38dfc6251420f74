"""Start-up hook of ``ropepatch run``: run the user's ``sitecustomize``, then ``ropepatch.enable()``.

Python imports the first ``sitecustomize`` on ``sys.path`` and only that one, so this module
finds and runs the one it shadows (from the rest of ``sys.path``) itself. While both run, the
bootstrap directory is taken off ``PYTHONPATH``, so a process started meanwhile does not
bootstrap again (OpenTelemetry does the same); it is put back afterwards so the processes the
program itself starts later are covered. This file imports only the standard library until it
calls into ropepatch, so an interpreter without ropepatch installed just skips that step.
"""

import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
_FLAG = "_ROPEPATCH_BOOTSTRAPPED"


def _real(path):
    try:
        return os.path.realpath(path or os.getcwd())
    except OSError:
        return path


def _without_here(value):
    # empty entries stay: Python reads one as the current directory
    return os.pathsep.join(p for p in value.split(os.pathsep) if not p or _real(p) != _HERE)


def _run_shadowed_sitecustomize():
    """Execute the ``sitecustomize`` this one shadows, as Python would have, if there is one."""
    import importlib.machinery
    import importlib.util

    search = [p for p in sys.path if _real(p) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", search)
    if spec is None or spec.loader is None or _real(spec.origin or "") == _real(__file__):
        return
    ours = sys.modules.get("sitecustomize")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module  # the user's module is the one `import sitecustomize` sees
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - what site.py does for a failing sitecustomize
        sys.modules["sitecustomize"] = ours
        sys.stderr.write(f"Error in sitecustomize ({spec.origin}); set PYTHONVERBOSE for traceback:\n")
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())


def _main():
    if getattr(sys, _FLAG, False):
        return  # executed twice in one interpreter (e.g. imported again under another name)
    setattr(sys, _FLAG, True)
    saved = os.environ.get("PYTHONPATH")
    entry = next((p for p in (saved or "").split(os.pathsep) if p and _real(p) == _HERE), None)
    during = None
    if entry is not None:
        during = os.environ["PYTHONPATH"] = _without_here(saved)
    try:
        _run_shadowed_sitecustomize()
        if os.environ.get("ROPEPATCH_AUTOENABLE", "1").strip().lower() in ("0", "false", "no", "off"):
            return
        try:
            from ropepatch.launcher.boot import autoenable
        except ImportError as exc:
            if os.environ.get("ROPEPATCH_STRICT", "").strip().lower() in ("1", "true", "yes", "on"):
                sys.stderr.write(f"ropepatch: not enabled in process {os.getpid()}: {exc}\n")
                sys.stderr.flush()
                os._exit(2)
            return  # an interpreter without ropepatch (another venv, a tool): leave it alone
        autoenable()
    finally:
        if entry is not None:
            now = os.environ.get("PYTHONPATH", "")
            if now == during:
                os.environ["PYTHONPATH"] = saved  # exactly as it was, empty entries included
            else:
                # put it back first, keeping whatever the user's sitecustomize changed meanwhile
                rest = _without_here(now)
                os.environ["PYTHONPATH"] = os.pathsep.join([entry, rest]) if rest else entry


_main()
