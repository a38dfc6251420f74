"""Values every detector shares: base, rotary dimension and context, read from any dialect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ropepatch.errors import RopeConfigError, short_repr
from ropepatch.metadata.view import ConfigView

__all__ = ["read_common", "rope_dict", "gguf_arch", "number"]


def number(value: Any, view: ConfigView, key: str, *, integer: bool = False) -> float | int:
    """``value`` as a finite number, or a RopeConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise RopeConfigError(f"expected a number, got {short_repr(value)}", path=view.path, key=key) from None
        else:
            raise RopeConfigError(
                f"expected a number, got {type(value).__name__} {short_repr(value)}", path=view.path, key=key
            )
    try:
        finite = math.isfinite(value)  # an int beyond float range overflows here
    except OverflowError:
        finite = False
    if not finite:
        raise RopeConfigError(f"expected a finite number, got {short_repr(value)}", path=view.path, key=key)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise RopeConfigError(f"expected a whole number, got {short_repr(value)}", path=view.path, key=key)
        return int(value)
    return value


def gguf_arch(view: ConfigView) -> str | None:
    arch = view.get("general.architecture")
    return arch if isinstance(arch, str) and arch else None


def rope_dict(view: ConfigView) -> tuple[dict[str, Any] | None, str, list[str]]:
    """The scaling dict (``rope_parameters`` or ``rope_scaling``), the key path it came from, and notes.

    transformers-5 ``rope_parameters`` may be nested by layer type (Gemma 3: ``full_attention``,
    ``sliding_attention``); the scaled layer type is returned and the others are noted.
    """
    notes: list[str] = []
    params = view.get("rope_parameters")
    legacy = view.get("rope_scaling")
    key = "rope_parameters"
    chosen = params
    if params is None:
        chosen, key = legacy, "rope_scaling"
    if chosen is None:
        return None, key, notes
    if not isinstance(chosen, Mapping):
        raise RopeConfigError(f"must be an object, got {type(chosen).__name__}", path=view.path, key=view.prefix + key)
    if chosen and all(isinstance(v, Mapping) for v in chosen.values()):
        scaled = [lt for lt, d in chosen.items() if (d.get("rope_type") or d.get("type") or "default") != "default"]
        layer = scaled[0] if scaled else ("full_attention" if "full_attention" in chosen else next(iter(chosen)))
        for other in chosen:
            if other != layer:
                d = chosen[other]
                notes.append(
                    f"layer type {other!r} uses {d.get('rope_type') or d.get('type') or 'default'} "
                    f"with rope_theta={d.get('rope_theta')}; the spec describes {layer!r}"
                )
        return dict(chosen[layer]), f"{key}.{layer}", notes
    if params is not None and isinstance(legacy, Mapping) and legacy and not _same(legacy, params):
        notes.append("both rope_parameters and rope_scaling are present; rope_parameters (transformers 5) is used")
    return dict(chosen), key, notes


def _same(a: Any, b: Any) -> bool:
    """``a == b``, False where comparing recurses without end (cyclic or absurdly deep metadata)."""
    try:
        return bool(a == b)
    except RecursionError:
        return False


def read_common(view: ConfigView) -> tuple[dict[str, Any], dict[str, str]]:
    """rope_theta, head_dim, rotary_dim and max_position_embeddings with provenance."""
    if view.kind == "gguf":
        return _read_gguf_common(view)
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    rd, rd_key, _ = rope_dict(view)
    rd = rd or {}

    if rd.get("rope_theta") is not None:
        values["rope_theta"], where["rope_theta"] = rd["rope_theta"], view.where(f"{rd_key}.rope_theta")
    else:
        theta, w = view.first("rope_theta", "rotary_emb_base", "rotary_base", "rope_base")
        if theta is not None:
            values["rope_theta"], where["rope_theta"] = theta, w
        elif view.get("rope_ratio") is not None:
            values["rope_theta"] = 10000.0 * number(view.get("rope_ratio"), view, "rope_ratio")
            where["rope_theta"] = f"10000 * {view.where('rope_ratio')}"
        else:
            values["rope_theta"], where["rope_theta"] = 10000.0, "default (no rope_theta in metadata)"
    values["rope_theta"] = number(values["rope_theta"], view, where["rope_theta"])

    head_dim, w = view.first("head_dim", "kv_channels")
    if head_dim is not None:
        values["head_dim"], where["head_dim"] = number(head_dim, view, w, integer=True), w
    else:
        hidden, hw = view.first("hidden_size", "n_embd", "n_embed", "d_model", "dim")
        heads, nw = view.first("num_attention_heads", "n_head", "n_heads", "num_heads")
        if hidden is not None and heads is not None:
            h = number(hidden, view, hw, integer=True)
            n = number(heads, view, nw, integer=True)
            if n <= 0 or h % n:
                raise RopeConfigError(f"hidden size {h} is not divisible by {n} heads", path=view.path, key=nw)
            values["head_dim"], where["head_dim"] = h // n, f"{hw} / {nw}"

    rope_head, w = view.first("qk_rope_head_dim", "rotary_dim", "rotary_emb_dim")
    if rope_head is not None:
        values["rotary_dim"], where["rotary_dim"] = number(rope_head, view, w, integer=True), w
    elif "head_dim" in values:
        if rd.get("partial_rotary_factor") is not None:
            frac, fw = rd["partial_rotary_factor"], view.where(f"{rd_key}.partial_rotary_factor")
        else:
            frac, fw = view.first("partial_rotary_factor", "rotary_pct", "rotary_emb_fraction")
        if frac is not None:
            f = number(frac, view, fw)
            if not 0 < f <= 1:
                raise RopeConfigError(f"must be in (0, 1], got {f}", path=view.path, key=fw)
            values["rotary_dim"] = int(values["head_dim"] * f)
            where["rotary_dim"] = f"{where['head_dim']} * {fw}"
        else:
            values["rotary_dim"], where["rotary_dim"] = values["head_dim"], where["head_dim"]

    maxpos, w = view.first("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")
    if maxpos is not None:
        values["max_position_embeddings"] = number(maxpos, view, w, integer=True)
        where["max_position_embeddings"] = w
    return values, where


def _read_gguf_common(view: ConfigView) -> tuple[dict[str, Any], dict[str, str]]:
    arch = gguf_arch(view)
    if arch is None:
        raise RopeConfigError("GGUF metadata has no general.architecture", path=view.path, key="general.architecture")
    values: dict[str, Any] = {}
    where: dict[str, str] = {}

    def take(name: str, key: str, integer: bool = False) -> None:
        full = f"{arch}.{key}"
        if view.get(full) is not None:
            values[name] = number(view.get(full), view, full, integer=integer)
            where[name] = view.where(full)

    take("rope_theta", "rope.freq_base")
    if "rope_theta" not in values:
        values["rope_theta"], where["rope_theta"] = 10000.0, "default (no rope.freq_base in GGUF)"
    take("rotary_dim", "rope.dimension_count", integer=True)
    take("head_dim", "attention.key_length", integer=True)
    emb, heads = view.get(f"{arch}.embedding_length"), view.get(f"{arch}.attention.head_count")
    if "head_dim" not in values and emb is not None and isinstance(heads, (int, float)) and heads:
        # head_count may be a float32 (NaN, 0.5) in a broken file: read it as the whole number it must be
        n = number(heads, view, f"{arch}.attention.head_count", integer=True)
        if n <= 0:
            raise RopeConfigError(f"must be positive, got {n}", path=view.path, key=f"{arch}.attention.head_count")
        values["head_dim"] = number(emb, view, f"{arch}.embedding_length", integer=True) // n
        where["head_dim"] = f"{view.where(arch + '.embedding_length')} / {view.where(arch + '.attention.head_count')}"
    if "rotary_dim" not in values and "head_dim" in values:
        values["rotary_dim"], where["rotary_dim"] = values["head_dim"], where["head_dim"]
    take("max_position_embeddings", "context_length", integer=True)
    return values, where
