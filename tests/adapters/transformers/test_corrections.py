"""What transformers computes itself stays its own; what it mishandles is corrected; what cos/sin
cannot carry is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tf_tiny import L0, make_config, make_model, rotary_of

from ropepatch.errors import RopeConfigError

torch = pytest.importorskip("torch")

NATIVE = [
    ("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}),
    ("qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0, "truncate": False}),
    (
        "llama",
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": L0,
        },
    ),
    ("mistral", {"rope_type": "linear", "factor": 4.0}),
    ("gpt_neox", {"rope_type": "dynamic", "factor": 4.0}),
]


@pytest.mark.parametrize(("family", "rope"), NATIVE, ids=[f"{f}-{r['rope_type']}" for f, r in NATIVE])
def test_methods_transformers_computes_stay_its_own(family: str, rope: dict[str, Any]) -> None:
    import ropepatch

    reference = rotary_of(make_model(make_config(family, rope_parameters=dict(rope))))
    ropepatch.enable()
    patched = rotary_of(make_model(make_config(family, rope_parameters=dict(rope))))
    assert patched.rope_type == rope["rope_type"]
    assert torch.equal(patched.inv_freq, reference.inv_freq)
    assert patched.attention_scaling == reference.attention_scaling


def test_longrope_phi3_stays_transformers_own() -> None:
    import ropepatch

    rope = {
        "rope_type": "longrope",
        "short_factor": [1.0] * 8,
        "long_factor": [float(i + 1) for i in range(8)],
        "factor": 4.0,
    }
    ref = rotary_of(make_model(make_config("phi3", rope_parameters=dict(rope))))
    ropepatch.enable()
    rot = rotary_of(make_model(make_config("phi3", rope_parameters=dict(rope))))
    assert rot.rope_type == "longrope" and torch.equal(rot.inv_freq, ref.inv_freq)
    # transformers switches to the long factors past the original context
    long_cos, _ = rot(torch.zeros(1), torch.arange(100)[None])
    ref_cos, _ = ref(torch.zeros(1), torch.arange(100)[None])
    assert torch.equal(long_cos, ref_cos)


def test_legacy_phi3_su_config_loads(tmp_path: Path) -> None:
    """Phi-3 'su' with a top-level original: transformers 5.0-5.24 raise KeyError; with ropepatch it is
    LongRoPE. Transformers 5.25 loads it itself, and then its own tables are the reference."""
    import transformers
    from packaging.version import Version
    from transformers import AutoConfig

    import ropepatch

    config = make_config("phi3").to_dict()
    config.pop("rope_parameters", None)
    short, long_ = [1.0] * 8, [1.0 + i / 4 for i in range(8)]
    config["rope_scaling"] = {"type": "su", "short_factor": short, "long_factor": long_}
    config["original_max_position_embeddings"] = L0
    (tmp_path / "config.json").write_text(json.dumps(config))
    native = None
    if Version(transformers.__version__) < Version("5.25"):
        with pytest.raises(Exception, match="original_max_position_embeddings"):
            AutoConfig.from_pretrained(tmp_path)
    else:
        native = rotary_of(make_model(AutoConfig.from_pretrained(tmp_path)))
    ropepatch.enable()
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters["rope_type"] == "longrope"
    rot = rotary_of(make_model(loaded))
    spec = ropepatch.detect(tmp_path)
    assert spec.method == "longrope"
    inv, attention = spec.frequencies(None)
    assert torch.allclose(rot.inv_freq, inv, rtol=1e-6, atol=0) and rot.attention_scaling == pytest.approx(attention)
    if native is not None:  # transformers' own LongRoPE for the same config: the same tables
        assert torch.allclose(rot.inv_freq, native.inv_freq, rtol=1e-6, atol=0)
        assert rot.attention_scaling == pytest.approx(native.attention_scaling, rel=1e-7)
    # factor = max/original = 4 -> sqrt(1 + ln 4 / ln 64)
    assert attention == pytest.approx(
        (1 + torch.log(torch.tensor(4.0)).item() / torch.log(torch.tensor(64.0)).item()) ** 0.5
    )


def test_qwen1_logn_is_refused_not_half_applied() -> None:
    import ropepatch

    ropepatch.enable(method="qwen-dynamic-ntk", original_max_position_embeddings=L0, use_logn_attn=True)
    with pytest.raises(RopeConfigError, match="use_logn_attn"):
        make_model(make_config("llama"))


def test_whole_head_temperature_on_partial_rotary_is_refused() -> None:
    import ropepatch

    ropepatch.enable(method="ntk-yarn", factor=4.0)
    with pytest.raises(RopeConfigError, match="rotates only"):
        make_model(make_config("gpt_neox"))


def test_softmax_scale_needs_a_model_that_applies_it() -> None:
    import ropepatch

    ropepatch.enable(method="yarn", factor=40.0, original_max_position_embeddings=L0, mscale=1.0, mscale_all_dim=1.0)
    with pytest.raises(RopeConfigError, match="softmax"):
        make_model(make_config("llama"))


def test_deepseek_softmax_scale_applied_by_its_own_attention() -> None:
    """DeepSeek-V3 YaRN (mscale = mscale_all_dim = 1): cos/sin 1.0, softmax x (0.1 ln 40 + 1)^2."""
    import ropepatch

    ropepatch.enable(method="yarn", factor=40.0, original_max_position_embeddings=L0, mscale=1.0, mscale_all_dim=1.0)
    model = make_model(make_config("deepseek_v3"))
    rot = rotary_of(model)
    assert rot.rope_type == "yarn" and rot.attention_scaling == pytest.approx(1.0)
    attention = model.model.layers[0].self_attn
    assert attention.scaling == pytest.approx(attention.qk_head_dim**-0.5 * 1.8738542070926265, rel=1e-9)


def test_meta_device_build() -> None:
    import ropepatch

    ropepatch.enable()
    config = make_config(
        "llama", rope_parameters={"rope_type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": L0}
    )
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    rot = rotary_of(model)
    assert rot.inv_freq.device.type == "meta" and rot.rope_type == "ropepatch_dynamic_yarn"
    assert rot.attention_scaling == 1.0


def test_dynamic_attention_factor_reset_on_a_shorter_input() -> None:
    """transformers' dynamic reset restores inv_freq but not attention_scaling; ropepatch types get both."""
    import ropepatch

    ropepatch.enable()
    config = make_config(
        "llama", rope_parameters={"rope_type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": L0}
    )
    rot = rotary_of(make_model(config))
    x = torch.zeros(1)
    rot(x, torch.arange(4 * L0)[None])
    assert rot.attention_scaling == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)  # s = L/L0 = 4
    cos, _ = rot(x, torch.arange(8)[None])
    assert rot.attention_scaling == 1.0
    assert cos[0, 0, 0].item() == 1.0  # cos(0) times the restored factor


def _write_gguf(path: Path, *, yarn: bool) -> None:
    gguf = pytest.importorskip("gguf", reason="writing a GGUF needs the gguf package")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-yarn")
    writer.add_context_length(4 * L0)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(128)
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(16.0)
        writer.add_rope_scaling_orig_ctx_len(L0 // 4)
        writer.add_rope_scaling_finetuned(True)
    tokens = [f"t{i}".encode() for i in range(128)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 128)
    writer.add_token_types([1] * 128)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (128, 64),
        "output_norm.weight": (64,),
        "output.weight": (128, 64),
        "blk.0.attn_norm.weight": (64,),
        "blk.0.attn_q.weight": (64, 64),
        "blk.0.attn_k.weight": (32, 64),
        "blk.0.attn_v.weight": (32, 64),
        "blk.0.attn_output.weight": (64, 64),
        "blk.0.ffn_norm.weight": (64,),
        "blk.0.ffn_gate.weight": (128, 64),
        "blk.0.ffn_up.weight": (128, 64),
        "blk.0.ffn_down.weight": (64, 128),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.02)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_yarn_metadata_is_kept(tmp_path: Path) -> None:
    """A YaRN x16 GGUF: transformers drops rope.scaling.* (plain RoPE); ropepatch keeps it (transformers' yarn)."""
    pytest.importorskip("accelerate", reason="from_pretrained(gguf_file=...) needs accelerate")
    from transformers import AutoModelForCausalLM

    import ropepatch

    _write_gguf(tmp_path / "tiny.gguf", yarn=True)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    assert rotary_of(plain).rope_type == "default"
    ropepatch.enable()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    rot = rotary_of(model)
    assert rot.rope_type == "yarn"
    assert model.config.rope_parameters["factor"] == 16.0
    assert model.config.rope_parameters["original_max_position_embeddings"] == L0 // 4
    # transformers' own yarn from an equivalent config is the reference
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, attention = ROPE_INIT_FUNCTIONS["yarn"](model.config, "cpu")
    assert torch.equal(rot.inv_freq, inv) and rot.attention_scaling == attention
    assert attention == pytest.approx(0.1 * torch.log(torch.tensor(16.0)).item() + 1)
