"""Tiny llama GGUF files written with the ``gguf`` package (random F32 weights, nothing downloaded).

``write_gguf`` writes what llama.cpp's converter would write for a Llama checkpoint: the HF weights
with Q/K rows permuted (HF rotates halves, llama.cpp's LLAMA rope rotates adjacent pairs), a small
SentencePiece-style vocabulary, and whatever ``{arch}.rope.*`` keys a test asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 64
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
LAYERS = 2
FFN = 128
HEAD_DIM = HIDDEN // HEADS
EPS = 1e-5

_TYPES = {"string": "add_string", "float32": "add_float32", "uint32": "add_uint32", "bool": "add_bool"}


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named Llama weights (float32) from a fixed seed."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out = {"model.embed_tokens.weight": w(VOCAB, HIDDEN, scale=0.5)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (1 + w(HIDDEN, scale=0.05)).astype(np.float32)
        out[p + "post_attention_layernorm.weight"] = (1 + w(HIDDEN, scale=0.05)).astype(np.float32)
        # large Q/K so attention is sharp and the rotary frequencies matter for the logits
        out[p + "self_attn.q_proj.weight"] = w(HEADS * HEAD_DIM, HIDDEN, scale=0.4)
        out[p + "self_attn.k_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN, scale=0.4)
        out[p + "self_attn.v_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * HEAD_DIM)
        out[p + "mlp.gate_proj.weight"] = w(FFN, HIDDEN)
        out[p + "mlp.up_proj.weight"] = w(FFN, HIDDEN)
        out[p + "mlp.down_proj.weight"] = w(HIDDEN, FFN)
    out["model.norm.weight"] = (1 + w(HIDDEN, scale=0.05)).astype(np.float32)
    out["lm_head.weight"] = w(VOCAB, HIDDEN, scale=0.3)
    return out


def to_llamacpp_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's [first half | second half] to llama.cpp's adjacent pairs."""
    rows, cols = weight.shape
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols).copy()


_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensors(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF names -> llama.cpp tensor names, Q/K permuted as llama.cpp's converter does."""
    out = {
        "token_embd.weight": weights["model.embed_tokens.weight"],
        "output_norm.weight": weights["model.norm.weight"],
        "output.weight": weights["lm_head.weight"],
    }
    for i in range(LAYERS):
        for hf, gg in _NAMES.items():
            t = weights[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = to_llamacpp_rows(t, HEADS)
            elif gg == "attn_k":
                t = to_llamacpp_rows(t, KV_HEADS)
            out[f"blk.{i}.{gg}.weight"] = t
    return out


def write_gguf(
    path: Path,
    weights: Mapping[str, np.ndarray],
    *,
    context_length: int,
    rope_theta: float = 10000.0,
    keys: Mapping[str, tuple[str, Any]] | None = None,
    extra_tensors: Mapping[str, np.ndarray] | None = None,
    name: str = "ropepatch-tiny-llama",
) -> Path:
    """Write a tiny llama GGUF; ``keys`` are extra ``key -> (type, value)`` pairs (e.g. rope scaling)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(rope_theta)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"\u2581t{i}" for i in range(VOCAB - 3)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-float(i) for i in range(VOCAB - 3)])
    w.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for key, (kind, value) in (keys or {}).items():
        getattr(w, _TYPES[kind])(key, value)
    for tname, tensor in {**gguf_tensors(weights), **(extra_tensors or {})}.items():
        w.add_tensor(tname, np.ascontiguousarray(tensor, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_config(rope_scaling: Mapping[str, Any] | None, *, max_position_embeddings: int, rope_theta: float = 10000.0):
    """The transformers LlamaConfig for the same model."""
    from transformers import LlamaConfig

    cfg: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=EPS,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    if rope_scaling is not None:
        cfg["rope_scaling"] = dict(rope_scaling)
    return LlamaConfig(**cfg)
