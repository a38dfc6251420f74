"""Detection of each metadata dialect, and clear errors for bad metadata."""

from __future__ import annotations

import json
import warnings

import pytest

import ropepatch
from ropepatch import RopeConfigError, RopeSpec

LLAMA = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 4096}


def detect(data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ropepatch.detect(data, **kw)


def test_type_and_rope_type_are_the_same_dialect():
    a = detect({**LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}})
    b = detect({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert a.method == b.method == "linear" and a.factor == b.factor == 2.0
    assert a.rotary_dim == 64


def test_rope_parameters_v5_with_theta_and_partial_rotary():
    spec = detect(
        {
            **LLAMA,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 5e5,
                "factor": 4.0,
                "original_max_position_embeddings": 1024,
                "partial_rotary_factor": 0.5,
            },
        }
    )
    assert (spec.method, spec.rope_theta, spec.rotary_dim) == ("yarn", 5e5, 32)
    assert spec.provenance["rope_theta"] == "dict:rope_parameters.rope_theta"


def test_rope_parameters_nested_by_layer_type():
    spec = detect(
        {
            "model_type": "gemma3_text",
            "head_dim": 256,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        }
    )
    assert (spec.method, spec.factor, spec.rope_theta) == ("linear", 8.0, 1e6)
    assert any("sliding_attention" in n for n in spec.notes)


def test_text_config_nesting():
    spec = detect(
        {
            "model_type": "mistral3",
            "text_config": {
                **LLAMA,
                "rope_theta": 1e6,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
            },
        }
    )
    assert spec.method == "yarn" and spec.rope_theta == 1e6
    assert spec.provenance["factor"] == "dict:text_config.rope_scaling.factor"


def test_hunyuan_style_dynamic_alpha_is_fixed_ntk():
    spec = detect({**LLAMA, "rope_scaling": {"type": "dynamic", "alpha": 1000.0}})
    assert spec.method == "ntk" and spec.method_params["alpha"] == 1000.0


def test_falcon_rw_and_qwen1_and_deepseek_dims():
    rw = detect({"model_type": "RefinedWeb", "n_embed": 8192, "n_head": 128})
    assert rw.rotary_dim == 64 and rw.rope_theta == 10000.0
    q = detect(
        {
            "model_type": "qwen",
            "kv_channels": 128,
            "seq_length": 8192,
            "use_dynamic_ntk": True,
            "use_logn_attn": True,
            "rotary_emb_base": 10000,
        }
    )
    assert q.method == "qwen-dynamic-ntk" and q.needs_query_scaling and q.rotary_dim == 128
    neox = detect({"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8, "rotary_pct": 0.25})
    assert neox.rotary_dim == 16


def test_dynamic_L0_prefers_original():
    spec = detect(
        {**LLAMA, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048}}
    )
    L0 = RopeSpec("dynamic", rotary_dim=64, factor=2.0, max_position_embeddings=2048)
    assert spec.compute(3000)[0] == L0.compute(3000)[0]


def test_gguf_binary_written_by_the_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("NousResearch/Yarn-Mistral-7b-128k")
    w.add_context_length(16384)
    w.add_embedding_length(4096)
    w.add_head_count(32)
    w.add_rope_freq_base(10000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(16.0)
    w.add_rope_scaling_orig_ctx_len(8192)
    w.add_rope_scaling_finetuned(True)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"] * 1000)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    spec = detect(path)
    assert (spec.method, spec.effective_factor, spec.effective_original, spec.rotary_dim) == ("yarn", 16.0, 8192, 128)
    assert spec.provenance["factor"] == "model.gguf:llama.rope.scaling.factor"
    # a folder holding only the GGUF works too
    assert detect(tmp_path).method == "yarn"


def test_checkpoint_folder_with_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "rope_scaling": {"type": "linear", "factor": 3.0}}))
    spec = detect(tmp_path)
    assert spec.method == "linear" and spec.source == str(tmp_path / "config.json")


def test_transformers_config_object():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "rope_theta": 5e5,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    )
    spec = detect(cfg)
    assert (spec.method, spec.effective_factor, spec.rope_theta, spec.rotary_dim) == ("llama3", 8.0, 5e5, 64)


# -- bad input ------------------------------------------------------------------------------------
def test_unknown_method_lists_known_and_closest():
    with pytest.raises(RopeConfigError) as e:
        detect({**LLAMA, "rope_scaling": {"type": "yran", "factor": 4.0}})
    assert "did you mean 'yarn'" in str(e.value) and "longrope" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_required_key_names_key_and_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                **LLAMA,
                "rope_scaling": {
                    "type": "longrope",
                    "short_factor": [1.0] * 32,
                    "original_max_position_embeddings": 4096,
                },
            }
        )
    )
    with pytest.raises(RopeConfigError) as e:
        detect(path)
    assert str(path) in str(e.value) and "long_factor" in str(e.value)


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), -2.0, 0.0, "four"])
def test_bad_factors(factor):
    with pytest.raises(RopeConfigError, match="factor"):
        detect({**LLAMA, "rope_scaling": {"type": "linear", "factor": factor}})


def test_factor_list_of_wrong_length(checkpoints_dir):
    data = json.loads((checkpoints_dir / "microsoft__Phi-3.5-mini-instruct.json").read_text())
    data["rope_scaling"]["long_factor"] = data["rope_scaling"]["long_factor"][:-1]
    with pytest.raises(RopeConfigError, match=r"long_factor has 47 entries.*needs 48"):
        detect(data)


def test_malformed_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"rope_scaling": {"type": "linear",, }')
    with pytest.raises(RopeConfigError, match="malformed JSON") as e:
        detect(path)
    assert e.value.path == str(path)


def test_malformed_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\xff" * 8)
    with pytest.raises(RopeConfigError, match="GGUF"):
        detect(path)
    path.write_bytes(b"NOPE" * 10)
    with pytest.raises(RopeConfigError, match="magic"):
        detect(path)


def test_factor_without_type_is_an_error():
    with pytest.raises(RopeConfigError, match="no 'type' or 'rope_type'"):
        detect({**LLAMA, "rope_scaling": {"factor": 4.0}})


def test_contradiction_warns_which_value_wins():
    with pytest.warns(ropepatch.RopepatchWarning, match="factor 4 is used"):
        spec = ropepatch.detect(
            {
                **LLAMA,
                "max_position_embeddings": 16384,
                "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
            }
        )
    assert spec.effective_context == 8192


def test_alibi_model_is_refused():
    with pytest.raises(RopeConfigError, match="not RoPE"):
        detect({"model_type": "falcon", "alibi": True, "hidden_size": 64, "num_attention_heads": 2})


def test_repo_id_is_never_downloaded():
    with pytest.raises(RopeConfigError, match="never downloads"):
        detect("someorg/somemodel-that-is-not-here")
