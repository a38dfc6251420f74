"""Dialects outside transformers' rope dict: Qwen-1, DeepSeek's and gpt-oss's native configs,
Meta's params.json, and configs of models that do not use RoPE at all."""

from __future__ import annotations

from ropepatch.detectors.common import number
from ropepatch.errors import RopeConfigError
from ropepatch.hookspecs import hookimpl
from ropepatch.metadata.view import ConfigView, Finding


@hookimpl
def detect_rope(view: ConfigView) -> Finding | None:
    if view.kind == "gguf":
        return None
    if view.get("alibi") is True or view.get("position_embedding_type") in ("alibi", "absolute", "learned"):
        raise RopeConfigError(
            "this model uses ALiBi or learned positions, not RoPE; there is nothing for ropepatch to scale",
            path=view.path,
            key=view.prefix + ("alibi" if view.get("alibi") is True else "position_embedding_type"),
        )
    for detector in (_qwen1, _deepseek_native, _gpt_oss_native, _meta_params):
        finding = detector(view)
        if finding is not None:
            return finding
    return None


def _qwen1(view: ConfigView) -> Finding | None:
    if view.get("use_dynamic_ntk") is None and not (view.model_type == "qwen" and view.get("seq_length")):
        return None
    if not view.get("use_dynamic_ntk"):
        f = Finding("default", detector="qwen1")
        f.provenance["method"] = view.where("use_dynamic_ntk")
        if view.get("use_logn_attn"):
            f.warnings.append("use_logn_attn without use_dynamic_ntk: logn query scaling is not modelled by 'default'")
        return f
    seq_length = view.get("seq_length")
    if seq_length is None:
        raise RopeConfigError(
            "Qwen-1 dynamic NTK needs 'seq_length' (the training length)",
            path=view.path,
            key=view.prefix + "seq_length",
        )
    f = Finding("qwen-dynamic-ntk", detector="qwen1")
    f.provenance["method"] = view.where("use_dynamic_ntk")
    f.set(
        "original_max_position_embeddings",
        number(seq_length, view, view.where("seq_length"), integer=True),
        view.where("seq_length"),
    )
    f.param("use_logn_attn", bool(view.get("use_logn_attn", False)), view.where("use_logn_attn"))
    return f


def _deepseek_native(view: ConfigView) -> Finding | None:
    if view.get("original_seq_len") is None or view.get("rope_factor") is None:
        return None
    original = number(view.get("original_seq_len"), view, view.where("original_seq_len"), integer=True)
    factor = number(view.get("rope_factor"), view, view.where("rope_factor"))
    max_seq = view.get("max_seq_len")
    if isinstance(max_seq, str) and "default" in max_seq:
        # a dump of the reference dataclass writes its default as text ("4096*4 (default)")
        max_seq = None
    if max_seq is not None:
        max_seq_where = view.where("max_seq_len")
        max_seq = number(max_seq, view, max_seq_where, integer=True)
    else:
        max_seq, max_seq_where = 4096 * 4, "DeepSeek reference default max_seq_len = 4096*4"
    f = Finding("yarn", detector="deepseek-native")
    f.set("max_position_embeddings", int(max_seq), max_seq_where)
    if max_seq <= original:
        f.method = "default"
        f.provenance["method"] = f"{max_seq_where} <= {view.where('original_seq_len')} (reference applies no YaRN)"
        return f
    f.provenance["method"] = f"{view.where('rope_factor')} with max_seq_len > original_seq_len (DeepSeek reference)"
    f.set("factor", factor, view.where("rope_factor"))
    f.set("original_max_position_embeddings", original, view.where("original_seq_len"))
    for key, default in (("beta_fast", 32), ("beta_slow", 1)):
        f.param(key, view.get(key, default), view.where(key) if view.get(key) is not None else "DeepSeek default")
    mscale = view.get("mscale", 1.0)
    mw = view.where("mscale") if view.get("mscale") is not None else "DeepSeek default mscale=1.0"
    # the reference leaves cos/sin alone and multiplies the softmax scale by mscale(s, mscale)^2,
    # which is transformers' yarn with mscale == mscale_all_dim
    f.param("mscale", mscale, mw)
    f.param("mscale_all_dim", mscale, mw)
    return f


def _gpt_oss_native(view: ConfigView) -> Finding | None:
    if view.get("initial_context_length") is None or view.get("rope_scaling_factor") is None:
        return None
    factor = number(view.get("rope_scaling_factor"), view, view.where("rope_scaling_factor"))
    f = Finding("yarn" if factor > 1 else "default", detector="gpt-oss-native")
    f.provenance["method"] = view.where("rope_scaling_factor")
    if factor <= 1:
        return f
    f.set("factor", factor, view.where("rope_scaling_factor"))
    f.set(
        "original_max_position_embeddings",
        number(view.get("initial_context_length"), view, view.where("initial_context_length"), integer=True),
        view.where("initial_context_length"),
    )
    f.param("beta_slow", view.get("rope_ntk_alpha", 1.0), view.where("rope_ntk_alpha"))
    f.param("beta_fast", view.get("rope_ntk_beta", 32.0), view.where("rope_ntk_beta"))
    f.param("truncate", False, "gpt-oss reference (no floor/ceil of the correction range)")
    return f


def _meta_params(view: ConfigView) -> Finding | None:
    if view.get("use_scaled_rope") is None:
        return None
    if not view.get("use_scaled_rope"):
        return Finding("default", detector="meta-params", provenance={"method": view.where("use_scaled_rope")})
    f = Finding("llama3", detector="meta-params")
    f.provenance["method"] = view.where("use_scaled_rope")
    factor, fw = view.first("rope_scaling_factor", "scale_factor")
    value = number(factor, view, fw) if factor is not None else 8.0
    f.set("factor", value, fw or "Meta reference default scale_factor=8")
    f.set("original_max_position_embeddings", 8192, "Meta reference old_context_len=8192")
    f.param("low_freq_factor", 1.0, "Meta reference low_freq_factor=1")
    f.param("high_freq_factor", 4.0, "Meta reference high_freq_factor=4")
    return f
