"""Fill the model dimensions a probe needs when a (corpus) config leaves them out.

Many checkpoint descriptions keep only the RoPE keys. The inverse frequencies depend on the head
size alone, so a probe can use any small model around the right head size; every filled value is
reported so nobody mistakes it for the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_HEAD_DIM", "clean_config", "fill_dims"]

#: the head size of Llama, Mistral, Qwen and most RoPE models, used when nothing says otherwise
DEFAULT_HEAD_DIM = 128


_ROTARY_SIZE_KEYS = ("qk_rope_head_dim", "kv_channels", "rotary_dim", "rotary_emb_dim")


def clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without annotation keys (``_source``, ``_notes``...), which no runtime reads."""
    return {k: v for k, v in config.items() if not str(k).startswith("_") or k == "_name_or_path"}


def _rope_block(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("rope_scaling", "rope_parameters"):
        block = config.get(key)
        if isinstance(block, Mapping):
            return block
    return {}


def fill_dims(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(config with hidden_size / num_attention_heads / head_dim filled, notes on what was filled)``."""
    out = dict(config)
    notes: list[str] = []
    hidden = out.get("hidden_size")
    heads = out.get("num_attention_heads")
    head_dim = out.get("head_dim")
    if hidden and heads:
        return out, notes  # the head size is given (or follows from these)
    # keys from which runtimes take the rotary size instead of hidden_size / heads (MLA, Qwen-1, NeoX...)
    own_size = next((k for k in _ROTARY_SIZE_KEYS if out.get(k)), None)
    if head_dim is None and own_size is not None:
        head_dim = int(out[own_size])
    elif head_dim is None:
        block = _rope_block(out)
        factors = block.get("short_factor") or block.get("long_factor")
        if isinstance(factors, list) and factors:
            head_dim, why = 2 * len(factors), f"twice the {len(factors)} LongRoPE factors"
        else:
            head_dim, why = DEFAULT_HEAD_DIM, "the usual Llama-family head size"
        out["head_dim"] = head_dim
        notes.append(f"head_dim {head_dim} assumed ({why})")
    if not heads:
        heads = int(hidden) // int(head_dim) if hidden and int(hidden) % int(head_dim) == 0 else 2
        out["num_attention_heads"] = heads
        notes.append(f"num_attention_heads {heads} filled")
    if not hidden:
        out["hidden_size"] = int(heads) * int(head_dim)
        notes.append(f"hidden_size {out['hidden_size']} filled")
    notes.insert(
        0, "the config lacks some model dimensions; the probe fills small ones (inv_freq depends on the head size only)"
    )
    return out, notes
