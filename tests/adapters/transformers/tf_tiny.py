"""Tiny randomly initialised models (hidden 64, 2 layers) of the families ropepatch patches."""

from __future__ import annotations

from typing import Any

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

#: model_type -> extra config kwargs
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1, "sliding_window": None},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"head_dim": 16, "use_sliding_window": False},
    "falcon": {
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "alibi": False,
        "parallel_attn": True,
        "bias": False,
    },
    "gpt_neox": {"rotary_pct": 0.5, "use_parallel_residual": True},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 4096, "final_logit_softcapping": None, "attn_logit_softcapping": None},
    "phi3": {"pad_token_id": 0, "original_max_position_embeddings": 64},
    "deepseek_v3": {
        "q_lora_rank": None,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "moe_intermediate_size": 32,
        "num_key_value_heads": 4,
    },
}

L0 = 64  # original context of every tiny checkpoint; max_position_embeddings is 4x that


def make_config(family: str, **extra: Any) -> Any:
    """A tiny config of ``family`` (transformers' AutoConfig), with ``extra`` on top."""
    from transformers import AutoConfig

    kwargs = {**COMMON, **FAMILIES[family], **extra}
    if family == "falcon":
        kwargs["num_attention_heads"] = kwargs.pop("num_attention_heads")
        kwargs.pop("num_key_value_heads", None)
        kwargs.pop("intermediate_size", None)
        kwargs["ffn_hidden_size"] = 128
    if family == "gpt_neox":
        kwargs.pop("num_key_value_heads", None)
    return AutoConfig.for_model(family, **kwargs)


def make_model(config: Any, seed: int = 0) -> Any:
    """A causal LM with seeded random weights, in float32 and eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def rotary_of(model: Any) -> Any:
    """The model's (first) rotary embedding module."""
    for module in model.modules():
        if "RotaryEmbedding" in type(module).__name__:
            return module
    raise AssertionError(f"{type(model).__name__} has no rotary embedding")
