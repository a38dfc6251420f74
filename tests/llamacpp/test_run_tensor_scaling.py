"""GGUFs whose scaling lives in tensors (Llama 3.x ``rope_freqs``, LongRoPE factor tensors) under llama.cpp.

llama.cpp applies those tensors itself, so ``ropepatch run -- llama-server`` must add no scaling of its
own (plain RoPE on top of the tensor) and must not refuse the file; an override that changes such a spec
cannot be expressed (no flag rewrites a tensor) and exits 2 before the binary starts. The tensors are
written by tests/tiny_gguf.py, an independent re-implementation of llama.cpp's converter rule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_run_llamacpp import flag, recorded, run, stub  # noqa: F401  (stub is a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny GGUF writer
import tiny_gguf as tg  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")


@pytest.fixture
def llama31_gguf(tmp_path: Path) -> Path:
    c = tg.LLAMA31
    freqs = tg.llama3_rope_freqs(c["base"], 64, c["factor"], c["low"], c["high"], c["original"])
    return tg.write_llama(tmp_path / "tiny-llama31.gguf", freqs, base=c["base"], hidden=128, heads=2, heads_kv=1)


@pytest.fixture
def per_dim_gguf(tmp_path: Path) -> Path:
    # a step function (Llama 4 style): not the llama3 rule, so detection says per-dim
    freqs = np.where(np.arange(32) < 16, 1.0, 8.0).astype(np.float32)
    return tg.write_llama(tmp_path / "tiny-step.gguf", freqs, base=500000.0, hidden=128, heads=2, heads_kv=1)


@pytest.mark.parametrize("fixture, method", [("llama31_gguf", "llama3"), ("per_dim_gguf", "per-dim")])
def test_tensor_scaling_adds_plain_rope_only(request, stub, fixture: str, method: str) -> None:  # noqa: F811
    path = request.getfixturevalue(fixture)
    bindir, record = stub
    r = run(["--", "llama-server", "-m", str(path)], bindir)
    assert r.returncode == 0, r.stderr
    argv = recorded(record)
    assert flag(argv, "--rope-scaling") == "none"  # the tensor divides the frequencies; nothing on top
    assert float(flag(argv, "--rope-freq-base")) == 500000.0
    assert "--rope-scale" not in argv and "--override-kv" not in argv
    assert method in r.stderr


def test_an_override_of_tensor_scaling_is_refused(llama31_gguf: Path, stub) -> None:  # noqa: F811
    bindir, record = stub
    r = run(["--factor", "16", "--", "llama-server", "-m", str(llama31_gguf)], bindir)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert not record.exists()  # refused before starting
    assert "tensors" in r.stderr and "llama3" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr


def test_longrope_factor_tensors_are_left_to_llama_cpp(tmp_path: Path, stub) -> None:  # noqa: F811
    bindir, record = stub
    long = np.linspace(1.0, 20.0, 8).astype(np.float32)
    short = np.ones(8, dtype=np.float32)
    path = tg.write_phi3(tmp_path / "tiny-phi3.gguf", long, short, original=64, context=1024, attn_factor=None)
    r = run(["--", "llama-server", "-m", str(path)], bindir)
    assert r.returncode == 0, r.stderr
    argv = recorded(record)
    assert flag(argv, "--rope-scaling") == "none" and "--rope-scale" not in argv
