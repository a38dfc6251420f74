"""benchmarks/rotary.py runs end to end (tiny shapes) and checks every variant it times.

Not a timed test: timings on a shared CPU are noise; this proves the script works and that each
variant it would time produces transformers' result.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rotary.py"


def _load():
    spec = importlib.util.spec_from_file_location("ropepatch_rotary_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_variant(capsys):
    bench = _load()
    rows = bench.run(["--quick", "--no-compile", "--dtype", "fp32,bf16", "--budget", "0.01", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "GB/s" in out and "% peak" in out and "measured tensor copy" in out
    names = {r["variant"] for r in rows}
    assert {"transformers eager", "ropepatch torch (tables)", "ropepatch torch (table-free)"} <= names
    assert {"ropepatch kernel (table-free)", "flash-attn triton rotary", "liger triton rotary"} <= names
    timed = [r for r in rows if "skipped" not in r]
    assert len(timed) == 2 * len(bench.QUICK_CASES) * 3  # eager + two ropepatch torch variants
    for r in timed:
        assert r["seconds"] > 0 and r["gbps"] > 0 and r["peak_pct"] > 0
        limit = 1e-5 if r["dtype"] == str(torch.float32) else 2.0**-6 * 4  # |values| < 4: 1 bf16 ulp
        assert r["max_err"] <= limit, r
    skipped = {r["variant"]: r["skipped"] for r in rows if "skipped" in r}
    assert skipped["transformers torch.compile"] == "skipped (--no-compile)"
    assert skipped["ropepatch kernel (tables)"].startswith("needs CUDA")


def test_byte_count_is_the_minimum_traffic():
    bench = _load()
    case = bench.Case("prefill", 1, 512, 40, 40, 128)  # Llama-2-13B attention
    # kernels.md: 40,960 bytes per token per layer in fp16 (q + k read and written once)
    assert case.min_bytes(torch.float16) == 512 * 40_960
