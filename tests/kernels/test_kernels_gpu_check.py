"""benchmarks/gpu_check.py: what a CPU can check - the skip line, the byte accounting, the peak table,
the table pipeline on tiny shapes. The timed GPU run itself needs CUDA (see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("ropepatch_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path; this host has CUDA")
def test_without_cuda_one_line_and_exit_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: skipped - no CUDA device visible"), out.stdout
    assert f"torch {torch.__version__}" in lines[0]


def test_llama2_13b_byte_accounting():
    gc = _load()
    h = gc.LLAMA2_13B
    assert (h["q_heads"], h["kv_heads"], h["head_dim"]) == (40, 40, 128)  # Llama-2-13B config.json
    # the published minimum: (40 + 40) * 128 * 2 B = 20,480 B of q+k per token, read + written = 40,960 B
    prefill = gc.case_bytes(1, 4096, 40, 40, 128, element_size=2)
    assert prefill == 4096 * 40_960 == 167_772_160
    assert gc.case_bytes(1, 1, 40, 40, 128, 2) == 40_960
    assert gc.case_bytes(64, 1, 40, 40, 128, 4) == 64 * 81_920
    assert [c[1:] for c in gc.CASES if c[0] == "prefill 4k"] == [(1, 4096)]


@pytest.mark.parametrize(
    "name,gbs",
    [
        ("NVIDIA H200", 4800.0),
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA H100 NVL", 3900.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100-SXM4-40GB", 1555.0),
        ("NVIDIA L4", 300.0),
        ("NVIDIA L40S", 864.0),
        ("NVIDIA A10G", 600.0),
    ],
)
def test_peak_bandwidth_by_device_name(name, gbs):
    # vendor datasheet figures (HBM/GDDR peak); the longest matching name wins (L40S is not L4)
    assert _load().peak_from_name(name)[0] == gbs


def test_unknown_device_falls_back_to_none():
    assert _load().peak_from_name("Some Future GPU") is None


def test_table_pipeline_on_tiny_cpu_shapes():
    gc = _load()
    rows = gc.benchmark(
        torch.device("cpu"),
        [torch.float32],
        [("prefill", 1, 8), ("decode B2", 2, 1)],
        peak_gbs=10.0,
        budget_s=0.01,
        deadline=time.monotonic() + 120,
        heads={"q_heads": 4, "kv_heads": 2, "head_dim": 16},
        launches=False,
        compile_hf=False,
    )
    timed = [r for r in rows if "skipped" not in r]
    assert {r["variant"] for r in timed} == {
        "transformers eager",
        "ropepatch torch (tables)",
        "ropepatch torch (table-free)",
    }
    for r in timed:
        assert r["max_err"] <= 1e-5, r  # each variant equals float32 transformers before it is timed
        tokens = 8 if r["case"] == "prefill" else 2
        assert r["bytes"] == gc.case_bytes(1, tokens, 4, 2, 16, 4)  # float32: 4-byte elements
        assert r["gbps"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9)
        assert r["peak_pct"] == pytest.approx(100 * r["gbps"] / 10.0)
    table = gc.format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["case", "dtype", "variant", "time"]
    assert "% peak" in table and "vs compile" in table and "launches" in table
    assert "skipped: needs CUDA" in table
    assert gc.decode_launch_failures(rows) == []  # no launch counts on CPU
    fake = [{"case": "decode B1", "dtype": "fp16", "variant": "ropepatch kernel (tables)", "launches": 2}]
    assert gc.decode_launch_failures(fake) == ["decode B1 fp16 ropepatch kernel (tables): 2 launches"]


def test_spent_budget_skips_the_rest():
    gc = _load()
    rows = gc.benchmark(
        torch.device("cpu"),
        [torch.float32],
        [("decode", 1, 1)],
        peak_gbs=10.0,
        budget_s=0.01,
        deadline=time.monotonic() - 1,
        heads={"q_heads": 2, "kv_heads": 1, "head_dim": 8},
        launches=False,
        compile_hf=False,
    )
    assert {r["skipped"] for r in rows if r["variant"] == "transformers eager"} == {"time budget spent"}
