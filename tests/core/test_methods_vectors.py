"""Every method against the published closed-form vectors (tests/data/reference/test-vectors.json).

The vectors are float64 values computed from the papers' and reference implementations' formulas,
independently of ropepatch; cases marked ``verified_against`` also match transformers 5.23.
"""

from __future__ import annotations

import json
import math

import pytest

from ropepatch import RopeSpec

TOL = 1e-12

# test-vector method name -> how to build the equivalent RopeSpec from the vector's params
BUILDERS = {
    "default": lambda p: RopeSpec("default", rope_theta=p["base"], rotary_dim=p["d"]),
    "linear": lambda p: RopeSpec("linear", rope_theta=p["base"], rotary_dim=p["d"], factor=p["factor"]),
    "ntk_fixed_alpha": lambda p: RopeSpec("ntk", rope_theta=p["base"], rotary_dim=p["d"], params={"alpha": p["alpha"]}),
    "dynamic_ntk_alpha_slope": lambda p: RopeSpec(
        "dynamic",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        factor=p["factor"],
        max_position_embeddings=p["max_position_embeddings"],
    ),
    "dynamic_ntk_ratio_unclamped": lambda p: RopeSpec(
        "dynamic-ntk-unclamped",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
    ),
    "qwen1_dynamic_ntk": lambda p: RopeSpec(
        "qwen-dynamic-ntk",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        original_max_position_embeddings=p["seq_length"],
        params={"use_logn_attn": True},
    ),
    "ntk_by_parts_3way": lambda p: RopeSpec(
        "part-ntk",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        factor=p["factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={k: p[k] for k in ("beta_0", "beta_1", "gamma_0", "gamma_1", "ntk_factor", "extrapolation_factor")},
    ),
    "yarn": lambda p: RopeSpec(
        "yarn",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        factor=p["factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={k: p[k] for k in ("beta_fast", "beta_slow", "truncate")},
    ),
    "yarn_deepseek": lambda p: RopeSpec(
        "yarn",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        factor=p["factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={k: p[k] for k in ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim")},
    ),
    "dynamic_yarn_not_finetuned": lambda p: RopeSpec(
        "dynamic-yarn",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={"beta_fast": p["beta_fast"], "beta_slow": p["beta_slow"], "finetuned": False},
    ),
    "llama3": lambda p: RopeSpec(
        "llama3",
        rope_theta=p["base"],
        rotary_dim=p["d"],
        factor=p["factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={"low_freq_factor": p["low_freq_factor"], "high_freq_factor": p["high_freq_factor"]},
    ),
    "longrope_attention_factor": lambda p: RopeSpec(
        "longrope",
        rotary_dim=2,
        factor=p["factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
        params={"short_factor": [1.0], "long_factor": [1.0]},
    ),
    "ntk_margin_yarn": lambda p: RopeSpec("ntk-yarn", rope_theta=p["base"], rotary_dim=p["d"], factor=p["factor"]),
}

SKIPPED_KINDS = {"self_extend", "rerope", "longrope"}  # inference-only tricks; longrope uses the corpus test


def _cases():
    from tests.conftest import VECTORS

    data = json.loads(VECTORS.read_text())["cases"]
    return [pytest.param(c, id=c["id"]) for c in data if c["method"] not in SKIPPED_KINDS]


def test_every_vector_kind_is_covered(vectors):
    kinds = {c["method"] for c in vectors.values()}
    assert kinds - SKIPPED_KINDS <= set(BUILDERS)
    # the two inference-only tricks are documented as not being scaling methods ropepatch applies
    assert SKIPPED_KINDS - {"longrope"} == {"self_extend", "rerope"}


@pytest.mark.parametrize("case", _cases())
def test_vector(case):
    p, expected = case["params"], case["expected"]
    spec = BUILDERS[case["method"]](p)
    seq_len = p.get("seq_len")
    inv, attention = spec.compute(seq_len)
    checked = 0
    for key, value in expected.items():
        if key.startswith("inv_freq["):
            index = int(key[len("inv_freq[") : -1])
            assert inv[index] == pytest.approx(value, rel=TOL), key
            checked += 1
        elif key == "attention_factor":
            assert attention == pytest.approx(value, rel=TOL)
            checked += 1
        elif key in ("logit_multiplier",):
            assert attention**2 == pytest.approx(value, rel=TOL)
            checked += 1
        elif key in ("softmax_scale_multiplier",):
            assert spec.softmax_scale == pytest.approx(value, rel=TOL)
            checked += 1
        elif key == "total_logit_multiplier":
            assert attention**2 * spec.softmax_scale == pytest.approx(value, rel=TOL)
            checked += 1
        elif key == "base_eff":
            d = spec.rotary_dim
            # inv_freq[1] = base_eff^(-2/d): recover the base the method used
            assert inv[1] ** (-d / 2) == pytest.approx(value, rel=1e-9)
            checked += 1
        elif key == "logn_q_scale_at_pos_L":
            assert spec.query_scale(seq_len - 1) == pytest.approx(value, rel=TOL)
            checked += 1
        elif key == "scale":
            assert attention == pytest.approx(1.0 if value <= 1 else 0.1 * math.log(value) + 1, rel=TOL)
            checked += 1
    assert checked, f"no checkable expectation in {case['id']}"


def test_phi35_longrope_long_factors(checkpoints_dir, vectors):
    case = vectors["phi3_5_mini_longrope_long"]
    cfg = json.loads((checkpoints_dir / "microsoft__Phi-3.5-mini-instruct.json").read_text())
    rs = cfg["rope_scaling"]
    spec = RopeSpec(
        "longrope",
        rope_theta=10000.0,
        rotary_dim=96,
        factor=32.0,
        original_max_position_embeddings=4096,
        max_position_embeddings=131072,
        params={"short_factor": rs["short_factor"], "long_factor": rs["long_factor"]},
    )
    inv, attention = spec.compute(4097)
    assert inv[0] == pytest.approx(case["expected"]["inv_freq[0]"], rel=TOL)
    assert inv[-1] == pytest.approx(case["expected"]["inv_freq[-1]"], rel=TOL)
    assert attention == pytest.approx(case["expected"]["attention_factor"], rel=TOL)
    short, _ = spec.compute(4096)
    assert short[0] == pytest.approx(1.0 / rs["short_factor"][0], rel=TOL)


def test_dynamic_methods_below_at_and_above_L0():
    """Dynamic rules: unchanged at and below L0 (clamped forms), scaled above."""
    base = RopeSpec("default", rope_theta=10000.0, rotary_dim=128).compute()[0]
    dyn = RopeSpec("dynamic", rope_theta=10000.0, rotary_dim=128, factor=4.0, original_max_position_embeddings=4096)
    for L in (1, 2048, 4096):
        assert dyn.compute(L)[0] == pytest.approx(base, rel=TOL)
    above = dyn.compute(8192)[0]
    # b' = b (4*2 - 3)^(128/126) = 1e4 * 5^(64/63)
    b = 1e4 * 5 ** (128 / 126)
    assert above[63] == pytest.approx(b ** (-126 / 128), rel=1e-12)
    # the initial state (seq_len None) is the L0 state
    assert dyn.compute(None)[0] == pytest.approx(base, rel=TOL)
    dyarn = RopeSpec(
        "dynamic-yarn", rotary_dim=128, original_max_position_embeddings=4096, factor=4.0, params={"finetuned": True}
    )
    # finetuned: never below the fine-tuned factor, so short inputs already use s = 4
    static = RopeSpec("yarn", rotary_dim=128, factor=4.0, original_max_position_embeddings=4096).compute()
    assert dyarn.compute(100) == (pytest.approx(static[0], rel=TOL), pytest.approx(static[1], rel=TOL))
    assert dyarn.compute(32768)[1] == pytest.approx(0.1 * math.log(8) + 1, rel=TOL)


def test_ntk_margin_is_ntk_with_alpha_s_plus_one(vectors):
    """NTK-Margin with s = 3 is bloc97's NTK with alpha = 4 (vector ntk_alpha4), without temperature."""
    expected = vectors["ntk_alpha4"]["expected"]
    inv, att = RopeSpec("ntk-margin", rotary_dim=128, factor=3.0).compute()
    assert inv[31] == pytest.approx(expected["inv_freq[31]"], rel=TOL)
    assert inv[-1] == pytest.approx(expected["inv_freq[-1]"], rel=TOL)
    assert att == 1.0
