"""Tiny randomly initialised byte-level Llama and an independent loss reference for the eval tests."""

from __future__ import annotations

from typing import Any

import torch

L0 = 32  # the tiny model's max_position_embeddings: its "training" context


def make_tiny_llama(seed: int = 0) -> Any:
    """A 2-layer Llama over byte ids (hidden 32, 2 heads of 16), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=L0,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    # transformers' init (std 0.02) gives near-uniform attention, which no RoPE change would move;
    # larger query/key weights make attention, and so the loss, depend on positions
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * 0.5)
    return model


def hf_window_losses(model: Any, windows: list[list[int]]) -> list[tuple[float, list[float]]]:
    """Independent reference: transformers' own loss per window, and per-token cross-entropy."""
    out = []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            result = model(input_ids=ids, labels=ids)
            per_token = torch.nn.functional.cross_entropy(result.logits[0, :-1].float(), ids[0, 1:], reduction="none")
            out.append((float(result.loss), per_token.tolist()))
    return out
