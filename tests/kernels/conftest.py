"""Fixtures of the rotary kernel tests: the kernel module (interpreted on CPU) and reference tables.

Triton decides between compiling and interpreting when ``@triton.jit`` decorates, i.e. when
``ropepatch.kernels.triton_rope`` is imported. Without a GPU the ``kernel`` fixture imports it with
``TRITON_INTERPRET=1`` set only for that import (re-importing it if something imported it compiled),
so nothing else in the test session sees the variable.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import pytest
import torch

CUDA = torch.cuda.is_available()
MODULE = "ropepatch.kernels.triton_rope"


@pytest.fixture(scope="session")
def kernel() -> ModuleType:
    """``ropepatch.kernels.triton_rope``, compiled on a GPU host, interpreted on a CPU-only host."""
    from ropepatch.kernels import triton_status

    ok, why = triton_status()
    if not ok:
        pytest.skip(why)
    if CUDA:
        return importlib.import_module(MODULE)
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = sys.modules.get(MODULE)
        if module is None:
            module = importlib.import_module(MODULE)
        elif not module.INTERPRETED:
            module = importlib.reload(module)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    assert module.INTERPRETED, "the kernel must run under the Triton interpreter on a CPU-only host"
    return module


def hf_tables(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, attention_factor: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin exactly as transformers' ``LlamaRotaryEmbedding.forward`` builds them from these values."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    dim = 2 * inv_freq.numel()
    config = LlamaConfig(hidden_size=dim, num_attention_heads=1, head_dim=dim, max_position_embeddings=64)
    rope = LlamaRotaryEmbedding(config)
    rope.inv_freq = inv_freq.clone()
    rope.attention_scaling = attention_factor
    probe = torch.empty(0, dtype=dtype, device=inv_freq.device)
    return rope(probe, position_ids)


def default_inv_freq(rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The published RoPE frequencies ``base ** (-2i / d)`` in float32."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def ulp_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """assert_close tolerances of one output rounding (1 ulp relative) plus float32 noise."""
    if dtype == torch.bfloat16:
        return {"rtol": 2.0**-7, "atol": 1e-5}
    if dtype == torch.float16:
        return {"rtol": 2.0**-10, "atol": 1e-5}
    return {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def tables() -> object:
    """The helpers above, for test modules (conftest isn't importable by name everywhere)."""

    class Tables:
        hf = staticmethod(hf_tables)
        inv_freq = staticmethod(default_inv_freq)
        tol = staticmethod(ulp_tolerance)

    return Tables
