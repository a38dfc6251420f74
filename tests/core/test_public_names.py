"""Public names say what they do, and the plugin front door stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ropepatch

ROOT = Path(__file__).resolve().parents[2]


def test_temporarily_enabled_enables_for_the_block_only() -> None:
    ropepatch.disable()
    with ropepatch.temporarily_enabled(runtimes=()) as state:
        assert ropepatch.is_enabled() and state is ropepatch.runtime.current()
    assert ropepatch.is_enabled() is False


def test_enabled_is_a_deprecated_alias() -> None:
    ropepatch.disable()
    with pytest.warns(DeprecationWarning, match="temporarily_enabled"):
        manager = ropepatch.enabled(runtimes=())
    with manager:
        assert ropepatch.is_enabled()
    assert not ropepatch.is_enabled()


def test_report_lists_every_adapter_with_its_state() -> None:
    ropepatch.disable()
    assert all(a["state"] == "disabled" for a in ropepatch.report()["adapters"].values())
    with ropepatch.temporarily_enabled(runtimes=("vllm",)):
        adapters = ropepatch.report()["adapters"]
    assert adapters["transformers"]["state"] == "not selected"
    assert adapters["vllm"]["state"] in ("waiting", "installed", "skipped", "failed")
    assert adapters["transformers"]["floor"] == "4.36" and adapters["transformers"]["tested_up_to"]


def test_the_front_door_loads_without_pluggy_or_torch() -> None:
    code = (
        "import sys, ropepatch\n"
        "assert not {'pluggy', 'torch'} & set(sys.modules), 'import ropepatch pulled in pluggy or torch'\n"
        "from ropepatch import Adapter, Capability, ConfigView, Finding, Method, Prepared, hookimpl, require_dim\n"
        "from ropepatch.methods.base import Method as M\n"
        "assert Method is M and 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
