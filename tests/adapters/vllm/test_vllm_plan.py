"""Which ``get_rope`` calls the vLLM adapter takes over, and the max_model_len it derives (no vLLM needed).

The expectations are vLLM's own behaviour (read in its 0.32/0.33 source: which types its factory
computes, how ``_get_and_verify_max_len`` scales) and the published method definitions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import LlamaConfig

from ropepatch.adapters.vllm.plan import config_view, plan_rope, rope_parameter_sets, serving_context
from ropepatch.errors import RopeConfigError
from ropepatch.overrides import parse_overrides

CHECKPOINTS = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def plan(rp, layers=(), head=128, max_position=4096, hf_config=None):
    view = config_view(rp, head_size=head, rotary_dim=head, max_position=max_position, hf_config=hf_config)
    return plan_rope(view, list(layers))


@pytest.mark.parametrize(
    "rp",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_theta": 500000.0,
        },
        {"rope_type": "ntk", "factor": 2.0, "rope_theta": 10000.0},  # vLLM's own NTK formula
        {"rope_type": "dynamic", "alpha": 2.0, "rope_theta": 10000.0},  # fixed NTK-alpha: vLLM is exact
        {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        {"rope_type": "deepseek_llama_scaling", "factor": 4.0, "rope_theta": 10000.0},  # not a ropepatch method
    ],
    ids=["default", "linear", "yarn", "llama3", "vllm-ntk", "dynamic-alpha", "mrope", "vllm-only-type"],
)
def test_vllm_keeps_what_it_computes_right(rp):
    assert plan(rp).spec is None


@pytest.mark.parametrize(
    ("rp", "method"),
    [
        ({"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, "ntk-yarn"),
        ({"rope_type": "part-ntk", "factor": 4.0, "original_max_position_embeddings": 4096}, "part-ntk"),
        ({"rope_type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, "dynamic-yarn"),
        ({"rope_type": "ntk_by_parts", "factor": 4.0, "original_max_position_embeddings": 4096}, "ntk-by-parts"),
        ({"rope_type": "falconlite-dntk", "original_max_position_embeddings": 2048}, "dynamic-ntk-unclamped"),
        # transformers' dynamic NTK: vLLM's class never scales (max_trained_positions = cache length)
        ({"rope_type": "dynamic", "factor": 2.0}, "dynamic"),
    ],
)
def test_ropepatch_takes_over_methods_vllm_lacks_or_breaks(rp, method):
    p = plan({**rp, "rope_theta": 10000.0})
    assert p.spec is not None and p.spec.method == method
    assert p.spec.rotary_dim == 128


def test_metadata_only_ropepatch_reads_is_honoured():
    # airophin: top-level original_max_position_embeddings, no rope_scaling -> 3-way partial NTK.
    # transformers 5 leaves rope_parameters at "default", so vLLM would serve it unscaled.
    data = json.loads((CHECKPOINTS / "bhenrym14__airophin-13b-pntk-16k-fp16.json").read_text())
    config = LlamaConfig(**{k: v for k, v in data.items() if not k.startswith("_")})
    rp = rope_parameter_sets(config)[0]
    assert rp["rope_type"] == "default"
    p = plan(rp, hf_config=config, max_position=config.max_position_embeddings)
    assert p.spec is not None and p.spec.method == "part-ntk" and p.spec.effective_factor == 4.0


def test_overrides_apply_by_model_name():
    config = LlamaConfig(hidden_size=512, num_attention_heads=8, max_position_embeddings=4096)
    config._name_or_path = "org/plain-llama"
    rp = {"rope_type": "default", "rope_theta": 10000.0}
    assert plan(rp, hf_config=config).spec is None
    p = plan(rp, parse_overrides("*plain*@yarn:factor=4"), hf_config=config)
    assert p.spec is not None and p.spec.method == "yarn" and p.reason == "override"
    assert plan(rp, parse_overrides("other/*@yarn:factor=4"), hf_config=config).spec is None


def test_methods_a_table_cannot_carry_are_refused():
    rp = {"rope_type": "qwen-dynamic-ntk", "original_max_position_embeddings": 2048, "use_logn_attn": True}
    with pytest.raises(RopeConfigError, match="use_logn_attn"):
        plan(rp)


def test_serving_context_is_what_max_model_len_should_be():
    def ctx(rp, max_position):
        return serving_context(plan({**rp, "rope_theta": 10000.0}, max_position=max_position).spec)

    # vLLM multiplies max_position_embeddings by 'factor' for every type but its yarn-like list, so a
    # ropepatch name on a config whose max_position_embeddings is already scaled would be
    # counted twice (1024 x 4); the context is factor x original
    assert ctx({"rope_type": "ntk-by-parts", "factor": 4.0, "original_max_position_embeddings": 256}, 1024) == 1024
    assert ctx({"rope_type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": 256}, 1024) == 1024
    assert ctx({"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 64}, 64) == 256
    # transformers' dynamic convention: max_position_embeddings is the original, context = factor x it
    assert ctx({"rope_type": "dynamic", "factor": 2.0}, 4096) == 8192
    # no factor at all (FalconLite): the metadata's own length
    assert ctx({"rope_type": "dynamic-ntk-unclamped", "original_max_position_embeddings": 2048}, 2048) == 2048


def test_nested_rope_parameters():
    class Cfg:
        rope_parameters = {
            "full_attention": {"rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_type": "default"},
        }

    assert [p["rope_type"] for p in rope_parameter_sets(Cfg())] == ["linear", "default"]
