"""Fixtures for the transformers adapter tests: tiny models, enable/disable, a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="the transformers adapter tests need transformers installed")
pytest.importorskip("torch", reason="the transformers adapter tests need torch installed")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))

# tiny models: one thread is ~50x faster than two contending ones on the 2-core CI machine
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def enabled() -> Any:
    """``ropepatch.enable()`` for the test, ``disable()`` after (whatever the test did)."""
    import ropepatch

    ropepatch.disable()
    os.environ.pop("ROPEPATCH", None)
    ropepatch.enable()
    yield ropepatch.runtime.current() if hasattr(ropepatch, "runtime") else None
    ropepatch.disable()


@pytest.fixture(autouse=True)
def _always_disabled_after() -> Any:
    yield
    import ropepatch

    ropepatch.disable()


def run_fresh(code: str, timeout: int = 300) -> Any:
    """Run ``code`` in a new interpreter (this checkout first on the path); return its last stdout line as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "ROPEPATCH"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT)
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"fresh interpreter failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
