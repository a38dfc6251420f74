"""Independent references for RoPE tables: transformers, the test vectors (tests/data), published formulas.

Nothing here calls ropepatch. Tables are laid out the way ExLlamaV2 lays out its own (float32
angles, sin/cos times the attention factor, cast to fp16), so a runtime table can be compared
element by element.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

DATA = Path(__file__).resolve().parents[2] / "data"
VECTORS = DATA / "reference" / "test-vectors.json"
CHECKPOINTS = DATA / "checkpoints"

# fp16 holds values near 1 to ~1e-3; a float32 angle at position ~8k carries ~1e-3 rad of rounding
# from the last bit of inv_freq. Anything beyond this is a different table (the native errors the
# tests show are 0.1 - 2).
TABLE_ATOL = 3e-3


def vector(case_id: str) -> dict[str, Any]:
    """``expected`` of one case of tests/data/reference/test-vectors.json ."""
    if not VECTORS.is_file():
        pytest.fail(f"test vectors not found at {VECTORS}")
    for case in json.loads(VECTORS.read_text())["cases"]:
        if case["id"] == case_id:
            return case["expected"]
    raise KeyError(case_id)


def checkpoint(name: str) -> dict[str, Any]:
    """A real checkpoint's RoPE metadata from tests/data/checkpoints, without the ``_`` annotation keys."""
    path = CHECKPOINTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"checkpoint corpus file not found at {path}")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def hf_frequencies(
    rope_type: str, params: dict[str, Any], *, head_dim: int, max_pos: int, theta: float, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """transformers' own ``ROPE_INIT_FUNCTIONS[rope_type]`` for a Llama config."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_type": rope_type, "rope_theta": theta, **params},
    )
    inv, attention = (
        ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
        if seq_len
        else ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    )
    return inv.to(torch.float32), float(attention)


def ntk_inv_freq(base: float, alpha: float, dim: int) -> torch.Tensor:
    """bloc97's NTK-aware base change ``b * alpha^(d/(d-2))`` (methods.md section 2), float64 -> float32."""
    b = base * alpha ** (dim / (dim - 2))
    return torch.tensor([1.0 / b ** (2 * i / dim) for i in range(dim // 2)], dtype=torch.float64).float()


def table(
    inv: torch.Tensor, factor: float, rows: int, *, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin, cos)`` ``[rows, rotary_dim]`` fp16 for one frequency vector, ExLlamaV2's layout."""
    t = torch.arange(rows, dtype=torch.float32)
    angles = torch.outer(t, inv.to(torch.float32))
    emb = torch.repeat_interleave(angles, 2, dim=-1) if interleaved else torch.cat((angles, angles), dim=-1)
    return (emb.sin() * factor).half(), (emb.cos() * factor).half()


def row(inv: torch.Tensor, factor: float, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row (NEOX layout) of the table for ``position`` with the given frequencies."""
    angles = torch.tensor(float(position), dtype=torch.float32) * inv.to(torch.float32)
    emb = torch.cat((angles, angles))
    return (emb.sin() * factor).half(), (emb.cos() * factor).half()


def columns(expected: dict[str, Any], dim: int) -> dict[int, float]:
    """``{column: inv_freq}`` from a test-vector ``expected`` dict (keys like ``inv_freq[31]``)."""
    out = {}
    for key, value in expected.items():
        if key.startswith("inv_freq["):
            index = int(key[len("inv_freq[") : -1])
            out[index % (dim // 2)] = float(value)
    return out


def expected_at(columns_: dict[int, float], factor: float, position: int) -> dict[int, tuple[float, float]]:
    """``{column: (sin, cos)}`` in float64 for a position, from test-vector frequencies."""
    return {c: (math.sin(position * f) * factor, math.cos(position * f) * factor) for c, f in columns_.items()}
