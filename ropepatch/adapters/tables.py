"""Cos/sin tables for serving engines that index a precomputed table by position (TGI, vLLM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["cos_sin_table"]


def cos_sin_table(spec: Any, rows: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cos, sin, inv_freq)`` for positions ``0 .. rows-1``, float32, shape ``[rows, rotary_dim/2]``.

    The attention factor multiplies cos and sin (so q and k; logits × factor²). A method whose
    frequencies depend on the length is evaluated once at ``rows``, the longest sequence the table
    serves: an engine that captures graphs or compiles over one table cannot rescale per request.
    Angles are ``position × inv_freq`` in float32, as transformers and the engines compute them.
    """
    import torch

    inv_freq, attention = spec.frequencies(int(rows) if spec.is_dynamic else None, device)
    t = torch.arange(int(rows), device=inv_freq.device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos() * attention, freqs.sin() * attention, inv_freq
