"""Rotary embedding benchmark: every implementation side by side in one run, prefill and decode shapes.

    python benchmarks/rotary.py                # all shapes, the device's default dtypes
    python benchmarks/rotary.py --quick        # tiny shapes (smoke run)
    python benchmarks/rotary.py --dtype bf16 --no-compile

Variants: transformers' eager ``apply_rotary_pos_emb`` (llama) and its ``torch.compile`` form,
ropepatch's PyTorch path (tables, table-free) and, on CUDA, ropepatch's Triton kernel (per-token
tables, position-indexed cache, table-free, table-free in place), flash-attn's Triton rotary and
Liger's Triton rotary where they are installed. Every variant's output is checked against
transformers' function in float32 before it is timed.

Time is the median over rounds of many calls. GB/s counts the same minimum traffic for every
variant - q and k read once and written once, ``2 * (Hq + Hkv) * tokens * head_dim * bytes`` - so it
is an effective bandwidth; cos/sin reads (<= 1.25% at head_dim 128) are left out. "% peak" divides by
the GPU's peak memory bandwidth (from its memory clock and bus width, else a table of known parts) or,
on CPU, by the bandwidth of a large tensor copy measured in the same run. CPU numbers are ratios
measured side by side on a shared, noisy machine, not absolute performance claims.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ropepatch.kernels import triton_status  # noqa: E402
from ropepatch.kernels.dispatch import (  # noqa: E402
    RotaryCache,
    apply_rotary,
    apply_rotary_cached,
    apply_rotary_table_free,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# published peak memory bandwidth (GB/s) of common parts, for when the device doesn't report it
KNOWN_PEAK_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
    "A10": 600.0,
    "RTX 4090": 1008.0,
    "B200": 8000.0,
}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``batch`` sequences of ``seq`` new tokens."""

    name: str
    batch: int
    seq: int
    q_heads: int
    kv_heads: int
    head_dim: int

    def label(self) -> str:
        return f"{self.name}: B{self.batch} S{self.seq} Hq{self.q_heads} Hkv{self.kv_heads} D{self.head_dim}"

    def min_bytes(self, dtype: torch.dtype) -> int:
        """q and k read once and written once."""
        elem = torch.empty(0, dtype=dtype).element_size()
        return 2 * (self.q_heads + self.kv_heads) * self.batch * self.seq * self.head_dim * elem


# Llama-3-8B attention (32 q heads, 8 kv heads, head_dim 128)
GPU_CASES = [
    Case("prefill", 1, 4096, 32, 8, 128),
    Case("prefill", 4, 2048, 32, 8, 128),
    Case("decode", 1, 1, 32, 8, 128),
    Case("decode", 64, 1, 32, 8, 128),
]
CPU_CASES = [Case("prefill", 1, 512, 32, 8, 128), Case("decode", 8, 1, 32, 8, 128)]
QUICK_CASES = [Case("prefill", 1, 32, 4, 2, 64), Case("decode", 2, 1, 4, 2, 64)]


@dataclass
class Inputs:
    """Everything a variant may need, built once per case and dtype."""

    q: torch.Tensor  # [batch, heads, seq, dim] contiguous, as transformers makes it
    k: torch.Tensor
    cos: torch.Tensor  # transformers' per-token tables [batch, seq, dim], model dtype
    sin: torch.Tensor
    positions: torch.Tensor  # [batch, seq] int64
    offsets: torch.Tensor  # [batch] first position of each sequence
    inv_freq: torch.Tensor
    cache: RotaryCache


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device) -> Inputs:
    """Random q/k, positions continuing a 1000-token context per sequence, transformers' tables."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(case.batch, case.q_heads, case.seq, case.head_dim, generator=g).to(device, dtype)
    k = torch.randn(case.batch, case.kv_heads, case.seq, case.head_dim, generator=g).to(device, dtype)
    offsets = (torch.arange(case.batch) * 37 + 1000).to(device)
    positions = offsets[:, None] + torch.arange(case.seq, device=device)[None, :]
    config = LlamaConfig(
        hidden_size=case.q_heads * case.head_dim,
        num_attention_heads=case.q_heads,
        num_key_value_heads=case.kv_heads,
        head_dim=case.head_dim,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    rope = LlamaRotaryEmbedding(config).to(device)
    cos, sin = rope(q, positions)
    cache = RotaryCache.build(rope.inv_freq, int(positions.max()) + 1)
    return Inputs(q, k, cos, sin, positions, offsets, rope.inv_freq, cache)


Variant = Callable[[Inputs], Callable[[], Any]]


def _llama_apply() -> Callable[..., Any]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb


def variants(device: torch.device, compile_hf: bool) -> list[tuple[str, Variant | str]]:
    """``(name, factory or reason it can't run here)``; a factory turns inputs into a zero-arg call."""
    hf = _llama_apply()
    out: list[tuple[str, Variant | str]] = [("transformers eager", lambda x: lambda: hf(x.q, x.k, x.cos, x.sin))]
    if compile_hf:
        compiled = torch.compile(hf, dynamic=False, fullgraph=True)
        out.append(("transformers torch.compile", lambda x: lambda: compiled(x.q, x.k, x.cos, x.sin)))
    else:
        out.append(("transformers torch.compile", "skipped (--no-compile)"))
    out += [
        ("ropepatch torch (tables)", lambda x: lambda: apply_rotary(x.q, x.k, x.cos, x.sin, backend="torch")),
        (
            "ropepatch torch (table-free)",
            lambda x: lambda: apply_rotary_table_free(x.q, x.k, x.inv_freq, x.positions, backend="torch"),
        ),
    ]
    if device.type != "cuda":
        why = "needs CUDA (the Triton interpreter is a test vehicle, not a timing target)"
        kernel: list[tuple[str, Variant | str]] = [
            ("ropepatch kernel (tables)", why),
            ("ropepatch kernel (cache)", why),
            ("ropepatch kernel (table-free)", why),
            ("ropepatch kernel (table-free, in place)", why),
        ]
    elif not triton_status()[0]:
        kernel = [("ropepatch kernel", triton_status()[1])]
    else:
        kernel = [
            ("ropepatch kernel (tables)", lambda x: lambda: apply_rotary(x.q, x.k, x.cos, x.sin, backend="triton")),
            (
                "ropepatch kernel (cache)",
                lambda x: lambda: apply_rotary_cached(x.q, x.k, x.cache, x.positions, backend="triton"),
            ),
            (
                "ropepatch kernel (table-free)",
                lambda x: lambda: apply_rotary_table_free(x.q, x.k, x.inv_freq, x.positions, backend="triton"),
            ),
            ("ropepatch kernel (table-free, in place)", _inplace_table_free),
        ]
    return out + kernel + [_flash_attn(device), _liger(device)]


def _inplace_table_free(x: Inputs) -> Callable[[], Any]:
    # rotating the same buffers again and again is harmless for timing; the check runs on fresh copies
    q, k = x.q.clone(), x.k.clone()

    def run() -> Any:
        return apply_rotary_table_free(q, k, x.inv_freq, x.positions, inplace=True, backend="triton")

    def first() -> Any:
        q.copy_(x.q)
        k.copy_(x.k)
        return run()

    run.check = first  # type: ignore[attr-defined]
    return run


def _flash_attn(device: torch.device) -> tuple[str, Variant | str]:
    name = "flash-attn triton rotary"
    try:
        from flash_attn.ops.triton.rotary import apply_rotary as fa_apply
    except Exception as exc:
        return name, f"not installed ({type(exc).__name__})"
    if device.type != "cuda":
        return name, "needs CUDA"

    def make(x: Inputs) -> Callable[[], Any]:
        # flash-attn wants [batch, seq, heads, dim] and a [positions, rot/2] table with per-batch offsets
        cos, sin = x.cache.cos, x.cache.sin

        def run() -> Any:
            q = fa_apply(x.q.transpose(1, 2), cos, sin, seqlen_offsets=x.offsets).transpose(1, 2)
            k = fa_apply(x.k.transpose(1, 2), cos, sin, seqlen_offsets=x.offsets).transpose(1, 2)
            return q, k

        return run

    return name, make


def _liger(device: torch.device) -> tuple[str, Variant | str]:
    name = "liger triton rotary"
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception as exc:
        return name, f"not installed ({type(exc).__name__})"
    if device.type != "cuda":
        return name, "needs CUDA"
    return name, lambda x: lambda: liger_rotary_pos_emb(x.q, x.k, x.cos, x.sin)


def measure(fn: Callable[[], Any], device: torch.device, *, budget_s: float, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds, each long enough to hide timer overhead."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < budget_s / (2 * rounds) or n < 3:  # warm-up, sizes a round
        fn()
        n += 1
        sync()
    per_round = max(1, n)
    samples = []
    for _ in range(rounds):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(per_round):
                fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1000.0 / per_round)
        else:
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples.append((time.perf_counter() - t0) / per_round)
    return statistics.median(samples)


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """``(GB/s, how it was obtained)`` for the device's memory."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        clock_khz = getattr(props, "memory_clock_rate", None)
        bus_bits = getattr(props, "memory_bus_width", None)
        if clock_khz and bus_bits:
            return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width (DDR)"
        for key in sorted(KNOWN_PEAK_GBS, key=len, reverse=True):
            if key in props.name:
                return KNOWN_PEAK_GBS[key], f"published figure for {key}"
    return _copy_bandwidth(device), "measured tensor copy (read + write)"


def _copy_bandwidth(device: torch.device) -> float:
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, budget_s=0.6, rounds=5)
    return 2 * src.numel() * 4 / t / 1e9


def _max_error(out: Any, want: tuple[torch.Tensor, torch.Tensor]) -> float:
    return max(float((a.float() - b).abs().max()) for a, b in zip(out, want, strict=True))


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print the tables, return one dict per (case, dtype, variant)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="comma list of fp32, fp16, bf16")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, short timing (a smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per variant")
    parser.add_argument("--case", choices=["prefill", "decode"], default=None, help="only these shapes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        # on a shared machine OpenMP barriers with busy cores cost milliseconds: 1 thread is steadier
        torch.set_num_threads(args.threads)
    default_dtypes = "bf16" if device.type == "cuda" else "fp32,bf16"
    dtypes = [DTYPES[d.strip()] for d in (args.dtype or default_dtypes).split(",")]
    cases = QUICK_CASES if args.quick else (GPU_CASES if device.type == "cuda" else CPU_CASES)
    cases = [c for c in cases if args.case in (None, c.name)]
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 1.0)
    peak, peak_how = peak_bandwidth(device)
    hf = _llama_apply()

    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    ok, triton_version = triton_status()
    print(
        f"device: {name} | peak {peak:.1f} GB/s ({peak_how}) | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | triton {triton_version if ok else 'unavailable'}"
    )
    print("GB/s = minimum traffic (q and k read + written once) / time; same bytes for every variant")
    results: list[dict[str, Any]] = []
    table = variants(device, compile_hf=not args.no_compile)
    for case in cases:
        for dtype in dtypes:
            x = make_inputs(case, dtype, device)
            want = hf(x.q.float(), x.k.float(), x.cos.float(), x.sin.float())
            nbytes = case.min_bytes(dtype)
            print(f"\n{case.label()} {str(dtype).removeprefix('torch.')} | {nbytes / 1e6:.3f} MB moved at minimum")
            print(f"  {'variant':40s} {'time':>11s} {'GB/s':>9s} {'% peak':>7s} {'vs eager':>9s} {'max err':>9s}")
            eager_time = None
            for vname, factory in table:
                row: dict[str, Any] = {"case": case.label(), "dtype": str(dtype), "variant": vname}
                if isinstance(factory, str):
                    row["skipped"] = factory
                    print(f"  {vname:40s} skipped: {factory}")
                    results.append(row)
                    continue
                fn = factory(x)
                t_compile = time.perf_counter()
                err = _max_error(getattr(fn, "check", fn)(), want)
                t_compile = time.perf_counter() - t_compile
                t = measure(fn, device, budget_s=budget, rounds=5 if args.quick else 15)
                eager_time = eager_time or t
                gbs = nbytes / t / 1e9
                row.update(seconds=t, gbps=gbs, peak_pct=100 * gbs / peak, vs_eager=eager_time / t, max_err=err)
                results.append(row)
                note = f"  (first call {t_compile:.1f} s)" if t_compile > 1.0 else ""
                print(
                    f"  {vname:40s} {_fmt_time(t):>11s} {gbs:9.2f} {row['peak_pct']:6.1f}% "
                    f"{row['vs_eager']:8.2f}x {err:9.1e}{note}"
                )
    return results


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.2f} us"


if __name__ == "__main__":
    run()
