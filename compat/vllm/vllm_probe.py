"""Runs inside vLLM's workers (shipped by reference through ``LLM.apply_model``): what rotary layer is there."""

from __future__ import annotations

import os
from typing import Any


def describe_rotary(model: Any) -> dict:
    """The first attention layer's rotary module: class, table rows, first entry, ropepatch spec."""
    rot = model.model.layers[0].self_attn.rotary_emb
    spec = getattr(rot, "ropepatch_spec", None)
    return {
        "pid": os.getpid(),
        "class": type(rot).__name__,
        "base_class": type(rot).__mro__[1].__name__,
        "cache_rows": int(rot.cos_sin_cache.shape[0]),
        "cos_sin_cache_00": round(float(rot.cos_sin_cache[0, 0]), 7),
        "spec": spec.summary() if spec is not None else None,
    }
