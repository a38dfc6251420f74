"""Launcher test helpers: run real interpreters with ropepatch importable and a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without ropepatch's variables, ropepatch importable from the repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def ropepatch_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60):
    """Run ``python -m ropepatch ARGS`` as a user would; return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "ropepatch", *args],
        env=env or clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
