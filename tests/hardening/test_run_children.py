"""``ropepatch run`` and Python children it cannot reach: ``python -I``, ``-E``, ``-S``, with real processes.

``-I``/``-E`` ignore ``PYTHONPATH`` (where the run's start-up hook lives) and ``-S`` skips ``site``
altogether. Such a child must not serve a model unpatched with exit status 0 and nothing said:
each one gets a warning line, and under ``--strict`` it does not start (the run exits 2, a
``Popen`` in a reached parent raises). The ``.pth`` hook of ``install-pth`` does reach ``-I``/``-E``
children; then nothing is reported and the child really is enabled.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import hardening_kit as kit
import pytest

from ropepatch.launcher import BOOTSTRAP_DIR, launch_environment
from ropepatch.launcher.children import interpreter_options

ROOT = Path(__file__).resolve().parents[2]
# what a child reports without importing ropepatch itself (an -I child may not be able to)
ENABLED = (
    "import sys; rt = sys.modules.get('ropepatch.runtime'); print('enabled' if rt and rt.is_enabled() else 'plain')"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ropepatch", "run", *args],
        env=env or _env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["python", "-I", "x.py"], {"I"}),
        (["python3", "-IS", "-c", "pass"], {"I", "S"}),
        (["python", "-u", "-sE", "-m", "mod", "-S"], {"u", "s", "E"}),  # -S after -m belongs to mod
        (["python", "-W", "error", "-E", "x.py"], {"E"}),  # -W's value is not an option
        (["python", "-Werror", "-Xdev", "-S"], {"S"}),
        (["python", "-X", "frozen_modules=off", "--", "-I"], set()),
        (["python", "-c", "-I"], set()),
        (["python", "script.py", "-E"], set()),
        (["python", "--check-hash-based-pycs", "always", "-I"], {"I"}),
    ],
)
def test_interpreter_options_stop_where_python_stops(argv, options):
    assert interpreter_options(argv) == options


FLAGS = [["-I"], ["-E"], ["-S"], ["-u", "-sE"]]


@pytest.mark.parametrize("flags", FLAGS, ids=["".join(f) for f in FLAGS])
def test_strict_run_refuses_an_unreachable_command_before_it_starts(tmp_path, flags):
    marker = tmp_path / "started"
    program = f"open({str(marker)!r}, 'w').close()"
    proc = _run("--strict", "--", sys.executable, *flags, "-c", program, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ropepatch: error: refusing to start"), proc.stderr
    assert ("-S skips the site module" if "S" in "".join(flags) else "ignores PYTHONPATH") in lines[0]
    kit.record("run-unreached-child", "error", "strict: refused before it started")


def test_plain_run_warns_and_the_child_really_is_unpatched(tmp_path):
    for flags in (["-I"], ["-E"], ["-S"]):
        proc = _run("--", sys.executable, *flags, "-c", ENABLED, env=_env(), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith("ropepatch: warning: ") and "will run without ropepatch" in proc.stderr
        assert proc.stdout.strip() == "plain", (flags, proc.stdout)  # the warning was true
        kit.record("run-unreached-child", "spec", "warned, ran unpatched")


PARENT = r"""
import subprocess, sys
code = "import ropepatch.runtime as rt; print('child', rt.is_enabled())"
try:
    subprocess.run([sys.executable, sys.argv[1], "-c", code], check=True)
except Exception as exc:
    print("refused:", type(exc).__name__, exc, flush=True)
    sys.exit(3)
subprocess.run([sys.executable, "-c", code], check=True)
"""


@pytest.mark.parametrize("flag", ["-I", "-E", "-S"])
def test_a_reached_parent_reports_or_refuses_its_unreachable_children(tmp_path, flag):
    (tmp_path / "parent.py").write_text(PARENT)
    proc = _run("--", sys.executable, "parent.py", flag, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("will run without ropepatch") == 1, proc.stderr
    assert proc.stdout.splitlines()[-1] == "child True"  # the child without the flag is reached
    kit.record("run-unreached-grandchild", "spec", "warned, ran unpatched")
    proc = _run("--strict", "--", sys.executable, "parent.py", flag, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr  # the parent's Popen raised: the child never ran
    assert proc.stdout.startswith("refused: UnreachedChildError"), proc.stdout
    assert not any(line.startswith("child ") for line in proc.stdout.splitlines())
    kit.record("run-unreached-grandchild", "error", "strict: Popen raised UnreachedChildError")


def test_the_pth_hook_reaches_isolated_children(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # ropepatch and its dependencies importable without PYTHONPATH, as an installed ropepatch is
    Path(purelib, "00-ropepatch-test-paths.pth").write_text("\n".join([str(ROOT), *site.getsitepackages()]) + "\n")
    installed = subprocess.run(
        [python, "-m", "ropepatch", "install-pth"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert installed.returncode == 0, installed.stderr
    for flags in (["-I"], ["-E"]):
        proc = _run("--strict", "--", python, *flags, "-c", ENABLED, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0] == "enabled", (flags, proc.stdout, proc.stderr)
        assert "without ropepatch" not in proc.stderr
        kit.record("run-pth-reaches-isolated", "spec")
    proc = _run("--strict", "--", python, "-S", "-c", ENABLED, cwd=tmp_path)
    assert proc.returncode == 2 and "-S skips the site module" in proc.stderr  # nothing reaches -S
    kit.record("run-pth-reaches-isolated", "error", "-S: refused")


def test_empty_pythonpath_entries_are_kept(tmp_path):
    assert launch_environment({}, environ={"PYTHONPATH": f"{os.pathsep}/a"})["PYTHONPATH"] == os.pathsep.join(
        [str(BOOTSTRAP_DIR), "", "/a"]
    )
    assert launch_environment({}, environ={"PYTHONPATH": f"/a{os.pathsep}"})["PYTHONPATH"] == os.pathsep.join(
        [str(BOOTSTRAP_DIR), "/a", ""]
    )
    assert launch_environment({}, environ={})["PYTHONPATH"] == str(BOOTSTRAP_DIR)
    # for real: a program run from elsewhere imports a module from the current directory, as the
    # user's empty PYTHONPATH entry asks, and sees PYTHONPATH exactly as the user wrote it
    work = tmp_path / "work"
    work.mkdir()
    (work / "from_cwd.py").write_text("VALUE = 'imported from the current directory'\n")
    script = tmp_path / "scripts" / "main.py"
    script.parent.mkdir()
    script.write_text(
        "import os, from_cwd, ropepatch.runtime as rt\n"
        "print(from_cwd.VALUE); print(rt.is_enabled()); print(repr(os.environ['PYTHONPATH']))\n"
    )
    user_path = os.pathsep.join(["", str(ROOT)])
    proc = _run("--", sys.executable, str(script), env=_env(PYTHONPATH=user_path), cwd=work)
    assert proc.returncode == 0, proc.stderr
    value, enabled, seen = proc.stdout.splitlines()
    assert value == "imported from the current directory" and enabled == "True"
    assert seen == repr(os.pathsep.join([str(BOOTSTRAP_DIR), user_path]))
    kit.record("run-empty-pythonpath-entry", "spec")
