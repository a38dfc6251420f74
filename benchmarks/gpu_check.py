"""One-command GPU check of the rotary kernel: the GPU tests, then one bandwidth table.

    python benchmarks/gpu_check.py              # tests + benchmark, < 8 minutes on one GPU
    python benchmarks/gpu_check.py --no-tests   # the benchmark table only
    python benchmarks/gpu_check.py --budget-s 300

Without CUDA it prints one line saying why and exits 0. With CUDA it

1. runs ``pytest tests/kernels`` and the CUDA test of ``enable(kernels=True)`` (compiled kernel,
   128k positions, CUDA graphs, custom ops, fullgraph compile, opcheck on CUDA tensors);
2. times every rotary variant on a 4k-token Llama-2-13B prefill (q, k ``[1, 4096, 40, 128]``) and
   on decode shapes, in float16 and bfloat16: transformers eager, transformers ``torch.compile``,
   ropepatch's kernel (per-token tables, position cache, table-free, table-free in place, and inside
   a ``torch.compile`` graph), Liger's and flash-attn's Triton rotary when installed;
3. counts GPU kernel launches per call with ``torch.profiler`` (q and k must take one launch in
   decode) and prints one table: time, achieved GB/s, % of the device's peak memory bandwidth,
   speed-up vs transformers eager and vs ``torch.compile``, max error vs float32 transformers.

GB/s is the minimum traffic (q and k read and written once, ``2 * (Hq + Hkv) * tokens * head_dim *
bytes``) over the time, the same bytes for every variant. Peak bandwidth comes from a table of
published figures by device name (:data:`PEAK_GBS`), else from a device-to-device copy measured here.
Exit status: 0 when the tests pass and decode takes one launch, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/rotary.py, imported as `rotary`

#: published peak memory bandwidth in GB/s, matched against torch.cuda.get_device_name() (the
#: longest matching key wins, so "H100 PCIe" beats "H100")
PEAK_GBS: dict[str, float] = {
    "B200": 8000.0,
    "GH200": 4000.0,
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100 80GB HBM3": 3350.0,  # SXM5
    "H100": 3350.0,
    "H800": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "A100": 1555.0,
    "A800": 2039.0,
    "L40S": 864.0,
    "L40": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "A10": 600.0,
    "T4": 320.0,
    "V100": 900.0,
    "RTX 4090": 1008.0,
    "RTX 3090": 936.0,
    "MI300X": 5300.0,
}

# (name, batch, new tokens, q heads, kv heads, head_dim): Llama-2-13B attention (40/40 heads, 128)
LLAMA2_13B = {"q_heads": 40, "kv_heads": 40, "head_dim": 128}
CASES = [
    ("prefill 4k", 1, 4096),
    ("decode B1", 1, 1),
    ("decode B64", 64, 1),
]
DTYPE_NAMES = ("fp16", "bf16")
_SHORT = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}


def peak_from_name(name: str) -> tuple[float, str] | None:
    """``(GB/s, key)`` of the longest :data:`PEAK_GBS` key contained in ``name``, or None."""
    for key in sorted(PEAK_GBS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_GBS[key], key
    return None


def case_bytes(batch: int, seq: int, q_heads: int, kv_heads: int, head_dim: int, element_size: int) -> int:
    """Minimum bytes a q+k rotation moves: every element of q and k read once and written once."""
    return 2 * (q_heads + kv_heads) * batch * seq * head_dim * element_size


def no_cuda_reason() -> str | None:
    """Why the check can't run here (one line), or None when a CUDA device is usable."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any broken install is a reason to skip
        return f"torch cannot be imported ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        built = "built with CUDA " + str(torch.version.cuda) if torch.version.cuda else "a CPU-only build"
        return f"no CUDA device visible (torch {torch.__version__}, {built})"
    return None


def run_tests(timeout_s: float) -> tuple[bool, str]:
    """Run the kernel tests with pytest in a subprocess; ``(passed, pytest's summary line)``."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/kernels",
        "tests/adapters/transformers/test_kernels_injection.py",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"pytest did not finish within {timeout_s:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else "no pytest output"
    if proc.returncode != 0:
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        print("\n".join(failed[:20]) or proc.stdout[-3000:] + proc.stderr[-2000:])
    return proc.returncode == 0, summary


def count_launches(fn: Callable[[], Any]) -> int:
    """GPU kernels one call of ``fn`` launches (torch.profiler, CUDA activity; memcpy/memset excluded)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower()
        and "memset" not in e.name.lower()
    ]  # fmt: skip
    return len(kernels)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The one table: a row per (case, dtype, variant); skipped variants say why."""
    head = (
        f"{'case':11s} {'dtype':5s} {'variant':40s} {'time':>10s} {'GB/s':>8s} {'% peak':>7s} "
        f"{'vs eager':>8s} {'vs compile':>10s} {'launches':>8s} {'max err':>8s}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        lead = f"{r['case']:11s} {r['dtype']:5s} {r['variant']:40s}"
        if "skipped" in r:
            out.append(f"{lead} skipped: {str(r['skipped']).removeprefix('skipped ')}")
            continue
        t = r["seconds"]
        t_s = f"{t * 1e3:.3f} ms" if t >= 1e-3 else f"{t * 1e6:.2f} us"
        vs_c = f"{r['vs_compile']:9.2f}x" if r.get("vs_compile") else f"{'-':>10s}"
        launches = str(r["launches"]) if r.get("launches") is not None else "-"
        out.append(
            f"{lead} {t_s:>10s} {r['gbps']:8.1f} {r['peak_pct']:6.1f}% {r['vs_eager']:7.2f}x {vs_c} "
            f"{launches:>8s} {r['max_err']:8.1e}"
        )
    return "\n".join(out)


def benchmark(
    device: Any,
    dtypes: Sequence[Any],
    cases: Sequence[tuple[str, int, int]],
    peak_gbs: float,
    *,
    budget_s: float,
    deadline: float,
    heads: dict[str, int] = LLAMA2_13B,
    launches: bool = True,
    compile_hf: bool = True,
) -> list[dict[str, Any]]:
    """Time every variant of ``benchmarks/rotary.py`` (plus the kernel inside a compiled graph) per case."""
    import rotary  # benchmarks/rotary.py
    import torch

    from ropepatch.kernels.dispatch import apply_rotary

    table = rotary.variants(device, compile_hf=compile_hf)
    if device.type == "cuda":
        compiled = torch.compile(apply_rotary, fullgraph=True, dynamic=False)
        table.insert(
            len(table) - 2, ("ropepatch kernel in torch.compile", lambda x: lambda: compiled(x.q, x.k, x.cos, x.sin))
        )
    hf = rotary._llama_apply()
    rows: list[dict[str, Any]] = []
    for name, batch, seq in cases:
        case = rotary.Case(name, batch, seq, heads["q_heads"], heads["kv_heads"], heads["head_dim"])
        for dtype in dtypes:
            x = rotary.make_inputs(case, dtype, device)
            want = hf(x.q.float(), x.k.float(), x.cos.float(), x.sin.float())
            nbytes = case_bytes(batch, seq, case.q_heads, case.kv_heads, case.head_dim, x.q.element_size())
            eager = compiled_t = None
            for vname, factory in table:
                row: dict[str, Any] = {"case": name, "dtype": _SHORT.get(str(dtype), str(dtype)), "variant": vname}
                rows.append(row)
                if isinstance(factory, str):
                    row["skipped"] = factory
                    continue
                if time.monotonic() > deadline:
                    row["skipped"] = "time budget spent"
                    continue
                try:
                    fn = factory(x)
                    err = rotary._max_error(getattr(fn, "check", fn)(), want)
                    t = rotary.measure(fn, device, budget_s=budget_s, rounds=10)
                    n_launch = count_launches(fn) if launches and device.type == "cuda" else None
                except Exception as exc:  # noqa: BLE001 - a third-party variant failing must not stop the table
                    row["skipped"] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
                    continue
                eager = eager or (t if vname == "transformers eager" else None)
                if vname == "transformers torch.compile":
                    compiled_t = t
                gbs = nbytes / t / 1e9
                row.update(
                    bytes=nbytes,
                    seconds=t,
                    gbps=gbs,
                    peak_pct=100 * gbs / peak_gbs,
                    vs_eager=(eager / t) if eager else 1.0,
                    vs_compile=(compiled_t / t) if compiled_t else None,
                    launches=n_launch,
                    max_err=err,
                )
    return rows


def decode_launch_failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    """ropepatch kernel rows of a decode case that took more than one launch for q and k."""
    return [
        f"{r['case']} {r['dtype']} {r['variant']}: {r['launches']} launches"
        for r in rows
        if r["case"].startswith("decode")
        and r["variant"].startswith("ropepatch kernel")
        and r.get("launches") is not None
        and r["launches"] != 1
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tests", action="store_true", help="skip pytest, print the table only")
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole-run limit in seconds (default 420)")
    parser.add_argument("--per-variant-s", type=float, default=0.4, help="timing seconds per variant and case")
    args = parser.parse_args(argv)

    start = time.monotonic()
    why = no_cuda_reason()
    if why is not None:
        print(f"gpu_check: skipped - {why}; nothing to measure without CUDA")
        return 0

    import torch

    from ropepatch.kernels import triton_status

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    ok_triton, triton_version = triton_status()
    copy_gbs = rotary_copy_bandwidth(device)
    known = peak_from_name(name)
    peak, how = (known[0], f"published figure for {known[1]}") if known else (copy_gbs, "measured copy")
    print(
        f"device: {name} | peak {peak:.0f} GB/s ({how}; measured copy {copy_gbs:.0f} GB/s) | "
        f"torch {torch.__version__} | triton {triton_version if ok_triton else 'unavailable'}"
    )

    tests_ok, summary = (True, "skipped (--no-tests)") if args.no_tests else run_tests(args.budget_s * 0.55)
    print(f"GPU tests: {summary}  ({time.monotonic() - start:.0f} s)")

    dtypes = [{"fp16": torch.float16, "bf16": torch.bfloat16}[d] for d in DTYPE_NAMES]
    rows = benchmark(
        device,
        dtypes,
        CASES,
        peak,
        budget_s=args.per_variant_s,
        deadline=start + args.budget_s - 20,
    )
    print("\nLlama-2-13B rotary (q, k: Hq 40, Hkv 40, head_dim 128); GB/s = q+k read and written once / time")
    print(format_table(rows))
    failures = decode_launch_failures(rows)
    print(f"\ndecode launches for q+k: {'all 1' if not failures else 'FAIL: ' + '; '.join(failures)}")
    elapsed = time.monotonic() - start
    print(f"elapsed: {elapsed:.0f} s (limit {args.budget_s:.0f} s)")
    return 0 if tests_ok and not failures else 1


def rotary_copy_bandwidth(device: Any) -> float:
    """GB/s of a large device-to-device tensor copy (read + write), the fallback peak."""
    import rotary

    return float(rotary._copy_bandwidth(device))


if __name__ == "__main__":
    sys.exit(main())
