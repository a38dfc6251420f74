"""The last detector: no scaling found. Says what the base and context mean for this family."""

from __future__ import annotations

import math

from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.view import ConfigView, Finding

#: the base each family was pre-trained with; a different rope_theta was baked in by training
FAMILY_THETA = {
    "llama": 10000.0,
    "falcon": 10000.0,
    "refinedweb": 10000.0,
    "refinedwebmodel": 10000.0,
    "gpt_neox": 10000.0,
    "gptj": 10000.0,
    "phi": 10000.0,
    "phi3": 10000.0,
    "gemma": 10000.0,
}

#: (model_type, max_position_embeddings) -> real pre-training context, where a config inflates it
INFLATED_CONTEXT = {
    ("qwen3", 40960): (32768, "Qwen3 configs say 40960 = 32768 native + a generation budget; it is not a scale"),
    ("qwen3_moe", 40960): (32768, "Qwen3 configs say 40960 = 32768 native + a generation budget; it is not a scale"),
}


@hookimpl(trylast=True)
def detect_rope(view: ConfigView) -> Finding:
    f = Finding("default", detector="fallback")
    f.provenance["method"] = "no scaling in metadata"
    mtype = view.model_type
    # GGUF-style metadata keeps its base in {arch}.rope.freq_base; a stray top-level rope_theta
    # there is not what the spec uses, so it gets no note (and is not checked: read it with care)
    theta = _real(view.get("rope_theta")) if view.kind != "gguf" else None
    family = FAMILY_THETA.get(mtype)
    if theta is not None and family and theta > 0 and theta != family:
        alpha = (theta / family) ** (1 - 2 / _dim_hint(view)) if _dim_hint(view) > 2 else None
        extra = f"; as fixed NTK that is alpha_eff = {alpha:.4g}" if alpha and theta > family else ""
        f.notes.append(
            f"rope_theta={theta:g} differs from {mtype}'s pre-training base {family:g}: baked in by training "
            f"(ABF / fine-tuned NTK){extra}. Nothing to rescale."
        )
    elif theta is not None and theta and theta != 10000:
        f.notes.append(f"rope_theta={theta:g} is the checkpoint's trained base (baked theta); nothing to rescale")
    maxpos = view.get("max_position_embeddings")
    hashable = isinstance(maxpos, int) and not isinstance(maxpos, bool)  # a list here raised TypeError
    hit = INFLATED_CONTEXT.get((mtype, maxpos)) if hashable else None
    if hit:
        original, why = hit
        f.set("original_max_position_embeddings", original, f"known checkpoint table ({why})")
        f.notes.append(why)
    return f


def _dim_hint(view: ConfigView) -> int:
    hd = view.get("head_dim")
    if isinstance(hd, int):
        return hd
    h, n = view.get("hidden_size"), view.get("num_attention_heads")
    if isinstance(h, int) and isinstance(n, int) and n:
        return h // n
    return 128


def _real(value: object) -> float | None:
    """``value`` as a finite float, or None (text, bool, NaN, an int past float64)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None
