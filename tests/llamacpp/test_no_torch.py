"""A llama.cpp user has no torch: the core (detection, the CLI, run, fix, enable) never imports it.

Each check runs in a fresh interpreter whose import system refuses ``torch`` (a meta-path finder
that raises ImportError), so an import of torch anywhere on these paths fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BLOCKER = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, NoTorch())
"""


def blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "check.py"
    script.write_text(BLOCKER + code)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ROPEPATCH", None)
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)


def test_core_cli_verbs_without_torch(plain_gguf: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.txt"
    stub = bindir / "llama-server"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    stub.chmod(0o755)
    out = tmp_path / "fixed.gguf"
    code = f"""
import os, subprocess
import ropepatch
from ropepatch.cli.main import main

assert main(["inspect", {str(plain_gguf)!r}]) == 0
assert main(["methods"]) == 0
assert main(["fix", {str(plain_gguf)!r}, "--out", {str(out)!r}, "--method", "yarn", "--factor", "4", "--original", "64"]) == 0
assert ropepatch.detect({str(out)!r}).method == "yarn"
ropepatch.enable()
ropepatch.disable()
assert "torch" not in sys.modules
# run replaces the process: do it last, through the console entry point's code path
os.environ["PATH"] = {str(bindir)!r} + os.pathsep + os.environ["PATH"]
sys.exit(main(["run", "--method", "linear", "--factor", "2", "--", "llama-server", "-m", {str(plain_gguf)!r}]))
"""
    r = blocked(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    argv = record.read_text().splitlines()
    assert argv[argv.index("--rope-scaling") + 1] == "linear"


def test_llama_cpp_python_adapter_without_torch(plain_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'ropepatch[llamacpp]')")
    code = f"""
import ropepatch
ropepatch.enable(method="linear", factor=2)
import llama_cpp
llm = llama_cpp.Llama(model_path={str(plain_gguf)!r}, n_ctx=64, verbose=False)
assert llm.context_params.rope_freq_scale == 0.5, llm.context_params.rope_freq_scale
assert "torch" not in sys.modules
"""
    r = blocked(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
