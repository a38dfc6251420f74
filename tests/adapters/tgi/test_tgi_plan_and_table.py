"""TGI adapter without TGI: which calls it takes over, and its cos/sin table against the references.

TGI's server is not on the package registries, so its classes are exercised in
test_tgi_source.py only against a source checkout (and in compat/tgi/). Here the spec the adapter
derives from TGI's arguments and the table it builds from it are checked against transformers'
own ROPE_INIT_FUNCTIONS (where transformers has the method) or tests/data/reference/test-vectors.json.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropepatch.adapters.tables import cos_sin_table
from ropepatch.adapters.tgi import plan_static, table_rows
from ropepatch.errors import RopeConfigError

HEAD = 64  # hidden 512 / 8 heads


def llama(rope: dict | None, max_pos: int = 4096, **kw) -> LlamaConfig:
    params = {"rope_theta": 10000.0, **(rope or {"rope_type": "default"})}
    return LlamaConfig(
        hidden_size=512, num_attention_heads=8, max_position_embeddings=max_pos, rope_parameters=params, **kw
    )


def reference_table(config: LlamaConfig, rows: int, seq_len: int | None = None):
    """cos, sin from transformers' own init function for the config's rope type (float32 angles)."""
    kind = config.rope_parameters["rope_type"]
    inv, attention = (
        ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)
        if kind == "dynamic"
        else ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    )
    freqs = torch.outer(torch.arange(rows, dtype=torch.float32), inv.float())
    return freqs.cos() * attention, freqs.sin() * attention


def table_for(state, config, dim=HEAD, base=10000.0, rope_scaling=None, rows=None):
    plan = plan_static(state, config, dim, base, tgi_rope_scaling=rope_scaling)
    assert plan is not None
    spec, planned_rows = plan
    cos, sin, _ = cos_sin_table(spec, rows or planned_rows)
    return spec, planned_rows, cos, sin


def test_linear_which_tgi_ignores_matches_transformers(state, monkeypatch):
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "16384")  # what TGI's launcher gives each shard
    config = llama({"rope_type": "linear", "factor": 4.0})
    # TGI passes the config's rope_scaling through _get_rope_config; here as TGI would read it
    spec, rows, cos, sin = table_for(state, config, rope_scaling={"type": "linear", "factor": 4.0})
    assert spec.method == "linear" and rows == 16384
    ref_cos, ref_sin = reference_table(config, rows)
    assert (cos - ref_cos).abs().max() < 2e-3 and (sin - ref_sin).abs().max() < 2e-3
    assert (cos[:4096] - ref_cos[:4096]).abs().max() < 5e-5  # float32 angle rounding grows with position
    # what TGI >= 2.0.3 serves (factor ignored) is the unscaled table: off by up to 2 in cos
    plain = torch.outer(torch.arange(rows, dtype=torch.float32), 1.0 / 10000.0 ** (torch.arange(0, HEAD, 2) / HEAD))
    assert (plain.cos() - ref_cos).abs().max() > 1.9


def test_yarn_attention_factor_and_betas_which_tgi_ignores_match_transformers(state, monkeypatch):
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "8192")
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "attention_factor": 1.5,
            "beta_fast": 16.0, "beta_slow": 2.0}  # fmt: skip
    config = llama(rope)
    spec, rows, cos, sin = table_for(state, config, rope_scaling=dict(rope))
    assert rows == 8192  # the launcher's MAX_TOTAL_TOKENS sizes the table
    assert spec.attention_factor() == 1.5
    ref_cos, ref_sin = reference_table(config, rows)
    assert (cos - ref_cos).abs().max() < 2e-3 and (sin - ref_sin).abs().max() < 2e-3
    assert abs(float(cos[0, 0]) - 1.5) < 1e-7  # the attention factor is in the table


def test_dynamic_is_evaluated_at_the_table_length(state, monkeypatch, vector):
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "16384")
    config = llama({"rope_type": "dynamic", "factor": 4.0}, max_pos=4096, head_dim=128)
    spec, rows, cos, sin = table_for(state, config, dim=128, rope_scaling={"type": "dynamic", "factor": 4.0})
    assert rows == 16384
    ref_cos, _ = reference_table(config, rows, seq_len=16384)
    assert (cos - ref_cos).abs().max() < 2e-3
    # and the frequency the table uses is the published vector's (d=128, s=4, L0=4096, L=16384)
    expected = vector("dynamic_ntk_hf_L16384")["expected"]["inv_freq[1]"]
    assert math.isclose(float(torch.atan2(sin[1, 1], cos[1, 1])), expected, rel_tol=1e-6)


def test_ropepatch_only_methods_follow_the_published_vectors(state, monkeypatch, vector):
    # NTK-YaRN (Alfred-40B-1023) named in the config, d = 64
    config = llama({"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, max_pos=2048)
    spec, _, cos, sin = table_for(state, config, rows=64)
    expected = vector("ntk_margin_yarn_alfred")["expected"]
    assert spec.method == "ntk-yarn"
    assert math.isclose(float(torch.hypot(cos[5, 3], sin[5, 3])), expected["attention_factor"], rel_tol=1e-6)
    assert math.isclose(float(torch.atan2(sin[1, 1], cos[1, 1])), expected["inv_freq[1]"], rel_tol=1e-6)
    # FalconLite's unclamped dynamic NTK evaluated at its served length 11000
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "11000")
    falcon = llama({"rope_type": "dynamic-ntk-unclamped", "original_max_position_embeddings": 2048}, max_pos=2048)
    spec, rows, cos, sin = table_for(state, falcon)
    expected = vector("falconlite_dntk_L11000")["expected"]
    assert rows == 11000
    assert math.isclose(float(torch.atan2(sin[1, 1], cos[1, 1])), expected["inv_freq[1]"], rel_tol=1e-6)


def test_what_stays_with_tgi(state):
    # plain RoPE at the caller's base: TGI's own table is right
    assert plan_static(state, llama(None), HEAD, 10000.0) is None
    # multimodal sections (Qwen2-VL's mrope)
    qwen_vl = llama({"rope_type": "default"})
    assert (
        plan_static(state, qwen_vl, HEAD, 10000.0, tgi_rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
        is None
    )


def test_the_callers_base_wins_over_the_config(state):
    # Gemma 3's local layers: TGI copies the config, sets rope_scaling default and passes
    # rope_local_base_freq as base while config.rope_theta is the global 1e6
    config = llama({"rope_type": "linear", "factor": 8.0}, max_pos=131072)
    config.rope_parameters["rope_theta"] = 1_000_000.0
    spec, _ = plan_static(state, config, HEAD, 1_000_000.0, tgi_rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert spec.rope_theta == 1_000_000.0
    assert plan_static(state, config, HEAD, 10_000.0, tgi_rope_scaling={"rope_type": "default"}) is None


def test_tgi_launcher_flags_and_ropepatch_overrides(state, monkeypatch):
    # --rope-scaling linear --rope-factor 2 reaches the shard as TGI's _get_rope_config result
    spec, _ = plan_static(state, llama(None), HEAD, 10000.0, tgi_rope_scaling={"type": "linear", "factor": 2.0})
    assert (spec.method, spec.effective_factor) == ("linear", 2.0)
    # $ROPEPATCH beats both the metadata and TGI's flags
    import ropepatch

    monkeypatch.setenv("ROPEPATCH", "ntk:alpha=3")
    ropepatch.enable()  # re-reads the environment
    spec, _ = plan_static(state, llama(None), HEAD, 10000.0, tgi_rope_scaling={"type": "linear", "factor": 2.0})
    assert (spec.method, spec.method_params["alpha"]) == ("ntk", 3.0)
    # a pattern that does not match the model leaves it alone
    monkeypatch.setenv("ROPEPATCH", "other/*@ntk:alpha=3")
    ropepatch.enable()
    config = llama(None)
    config._name_or_path = "org/plain-llama"
    assert plan_static(state, config, HEAD, 10000.0) is None


def test_falconlite2_base_comes_from_the_known_table(state, tmp_path):
    # TGI's RWConfig fills rope_theta=10000 when config.json has none; FalconLite2 was trained at 1e6
    folder = tmp_path / "FalconLite2"
    folder.mkdir()
    raw = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "new_decoder_architecture": True}
    (folder / "config.json").write_text(json.dumps(raw))
    config = AutoConfig.from_pretrained(folder)  # names the folder, as TGI's loading does
    assert config.to_dict()["rope_parameters"]["rope_theta"] == 10000.0  # what the config object says
    spec, _ = plan_static(state, config, 64, 10000.0)
    assert (spec.method, spec.rope_theta) == ("default", 1_000_000.0)
    assert "known checkpoint table" in spec.provenance["rope_theta"]
    # when the checkpoint states its base, the caller's base (= the config's) stays
    (folder / "config.json").write_text(json.dumps({**raw, "rope_theta": 10000.0}))
    assert plan_static(state, AutoConfig.from_pretrained(folder), 64, 10000.0) is None


def test_methods_a_table_cannot_carry_are_refused(state):
    qwen = llama(None, max_pos=8192)
    qwen.rope_parameters = {"rope_type": "qwen-dynamic-ntk", "original_max_position_embeddings": 2048,
                            "use_logn_attn": True, "rope_theta": 10000.0}  # fmt: skip
    with pytest.raises(RopeConfigError, match="query or softmax scaling"):
        plan_static(state, qwen, HEAD, 10000.0)


def test_table_rows():
    from ropepatch import RopeSpec

    yarn = RopeSpec(method="yarn", factor=4.0, original_max_position_embeddings=4096, rotary_dim=64)
    assert table_rows(yarn, environ={"MAX_TOTAL_TOKENS": "24576"}) == 24576
    assert table_rows(yarn, environ={}) == 16384
    dyn = RopeSpec(method="dynamic", factor=2.0, max_position_embeddings=4096, rotary_dim=64)
    assert table_rows(dyn, environ={"MAX_TOTAL_TOKENS": "bogus"}) == 8192


# -- overrides of the checkpoint's own scaling --------------------------------------------------
OVERRIDE_CASES = {
    "yarn x4 -> x8": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        {"method": "yarn", "factor": 8.0},
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096},
    ),
    "linear x2 -> factor 4": (
        {"rope_type": "linear", "factor": 2.0},
        {"factor": 4.0},
        {"rope_type": "linear", "factor": 4.0},
    ),
    "llama3 x8 -> x16": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 4096,
        },
        {"method": "llama3", "factor": 16.0},
        {
            "rope_type": "llama3",
            "factor": 16.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 4096,
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize("route", ["kwargs", "ROPEPATCH", "per_model"])
@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_an_override_of_the_checkpoints_own_scaling_wins(state, monkeypatch, case, route):
    """TGI builds layers inside its shards (no model object for patch_model); the other routes apply."""
    import ropepatch

    monkeypatch.setenv("MAX_TOTAL_TOKENS", "8192")
    rope, override, expected = OVERRIDE_CASES[case]
    config = llama(rope, max_pos=16384)
    config._name_or_path = "acme/tiny-scaled-4k"
    tgi_reads = {"type": rope["rope_type"], **{k: v for k, v in rope.items() if k != "rope_type"}}
    if route == "kwargs":
        ropepatch.enable(**override)
    elif route == "ROPEPATCH":
        rest = ",".join(f"{k}={v:g}" for k, v in override.items() if k != "method")
        monkeypatch.setenv("ROPEPATCH", f"{override['method']}:{rest}" if "method" in override else rest)
        ropepatch.enable()
    else:
        ropepatch.enable(per_model={"*tiny-scaled*": override, "*other*": {"factor": 32.0}})
    spec, rows, cos, sin = table_for(ropepatch.runtime.current(), config, rope_scaling=tgi_reads)
    assert rows == 8192 and spec.effective_factor == expected["factor"]
    ref_cos, ref_sin = reference_table(llama(expected, max_pos=16384), rows)
    assert (cos - ref_cos).abs().max() < 2e-3 and (sin - ref_sin).abs().max() < 2e-3
    own_cos, _ = reference_table(llama(rope, max_pos=16384), rows)
    assert (cos - own_cos).abs().max() > 0.1  # not the checkpoint's own table


def test_a_base_override_reaches_a_plain_checkpoint(state, monkeypatch):
    import ropepatch

    ropepatch.enable(rope_theta=500000.0)
    spec, _, cos, _ = table_for(ropepatch.runtime.current(), llama(None), rows=4096)
    assert spec.rope_theta == 500000.0
    inv = torch.tensor([500000.0 ** (-2 * i / HEAD) for i in range(HEAD // 2)], dtype=torch.float64).float()
    ref = torch.outer(torch.arange(4096, dtype=torch.float32), inv).cos()
    assert (cos - ref).abs().max() < 2e-3
