"""Tiny GGUF files whose RoPE scaling lives in tensors, written with the ``gguf`` package's GGUFWriter.

``llama3_rope_freqs`` is an independent re-implementation of the published rule as llama.cpp's converter
applies it (Meta's ``apply_scaling`` bands, stored as one divisor per frequency, computed in float32 like
the converter's torch code): it shares nothing with ropepatch's own llama3 code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: Llama 3.1 8B's rope: head_dim 128, base 500000, factor 8, low 1, high 4, original context 8192
LLAMA31 = {"base": 500000.0, "dim": 128, "factor": 8.0, "low": 1.0, "high": 4.0, "original": 8192}


def llama3_rope_freqs(base: float, dim: int, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The ``rope_freqs`` divisors: 1 below ``original/high`` tokens of wavelength, ``factor`` above
    ``original/low``, ``1/((1-smooth)/factor + smooth)`` between (float32 throughout, as converted)."""
    f32 = np.float32
    freqs = f32(1.0) / (f32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / f32(dim)))
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (f32(original) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def _writer(path: Path, arch: str, *, name: str, context: int, hidden: int, heads: int, heads_kv: int) -> Any:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(2)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(heads_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(128)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(128)])
    w.add_token_scores([0.0] * 128)
    w.add_token_types([1] * 128)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    return w


def _finish(w: Any, shapes: dict[str, tuple[int, ...]], extra: dict[str, np.ndarray], first: bool = True) -> None:
    rng = np.random.default_rng(0)
    if first:  # llama.cpp's converter writes its generated tensors before the model's own
        for name, values in extra.items():
            w.add_tensor(name, values)
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    if not first:
        for name, values in extra.items():
            w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama(
    path: Path,
    rope_freqs: np.ndarray | None,
    *,
    base: float = 500000.0,
    hidden: int = 256,
    heads: int = 2,
    heads_kv: int = 1,
    context: int = 131072,
    first: bool = True,
    keys: dict[str, Any] | None = None,
) -> Path:
    """A 2-layer F32 Llama (head_dim = hidden/heads) with ``rope_freqs.weight`` when given."""
    w = _writer(path, "llama", name="tiny-llama-3.1", context=context, hidden=hidden, heads=heads, heads_kv=heads_kv)
    w.add_rope_freq_base(base)
    w.add_rope_dimension_count(hidden // heads)
    for key, value in (keys or {}).items():
        getattr(w, key)(value)
    kv = hidden // heads * heads_kv
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (128, hidden), "output_norm.weight": (hidden,)}
    shapes["output.weight"] = (128, hidden)
    for b in range(2):
        shapes |= {
            f"blk.{b}.attn_norm.weight": (hidden,),
            f"blk.{b}.attn_q.weight": (hidden, hidden),
            f"blk.{b}.attn_k.weight": (kv, hidden),
            f"blk.{b}.attn_v.weight": (kv, hidden),
            f"blk.{b}.attn_output.weight": (hidden, hidden),
            f"blk.{b}.ffn_norm.weight": (hidden,),
            f"blk.{b}.ffn_gate.weight": (2 * hidden, hidden),
            f"blk.{b}.ffn_up.weight": (2 * hidden, hidden),
            f"blk.{b}.ffn_down.weight": (hidden, 2 * hidden),
        }
    _finish(w, shapes, {} if rope_freqs is None else {"rope_freqs.weight": rope_freqs}, first)
    return path


def write_phi3(
    path: Path,
    long_factor: np.ndarray,
    short_factor: np.ndarray,
    *,
    original: int,
    context: int,
    attn_factor: float | None,
    hidden: int = 64,
    heads: int = 4,
) -> Path:
    """A 2-layer F32 Phi-3 with LongRoPE factor tensors (fused qkv and gate/up, as llama.cpp stores them)."""
    import gguf

    w = _writer(path, "phi3", name="tiny-phi-3", context=context, hidden=hidden, heads=heads, heads_kv=heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_scaling_orig_ctx_len(original)
    if attn_factor is not None:
        w.add_float32(gguf.Keys.Rope.SCALING_ATTN_FACTOR.format(arch="phi3"), attn_factor)
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (128, hidden), "output_norm.weight": (hidden,)}
    shapes["output.weight"] = (128, hidden)
    for b in range(2):
        shapes |= {
            f"blk.{b}.attn_norm.weight": (hidden,),
            f"blk.{b}.attn_qkv.weight": (3 * hidden, hidden),
            f"blk.{b}.attn_output.weight": (hidden, hidden),
            f"blk.{b}.ffn_norm.weight": (hidden,),
            f"blk.{b}.ffn_up.weight": (4 * hidden, hidden),
            f"blk.{b}.ffn_down.weight": (hidden, 2 * hidden),
        }
    extra = {"rope_factors_long.weight": long_factor, "rope_factors_short.weight": short_factor}
    _finish(w, shapes, extra)
    return path
