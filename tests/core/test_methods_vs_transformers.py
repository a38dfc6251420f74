"""ropepatch's methods against transformers' own ``ROPE_INIT_FUNCTIONS``, where transformers has them.

Independent reference: transformers computes in float32 with its own code; ropepatch computes in
float64 and rounds. They must agree to a few float32 ulps, attention factors exactly.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from ropepatch import RopeSpec  # noqa: E402

RTOL = 2e-6
# transformers blends YaRN's ramp in float32 (three roundings per element); a fractional ramp
# (truncate=False) costs it up to ~2.4e-6 relative against the float64 value ropepatch rounds once
RTOL_BLEND = 5e-6


def hf(rope_parameters: dict, head_dim: int, max_pos: int, seq_len=None, partial: float | None = None):
    params = dict(rope_parameters)
    if partial is not None:
        params["partial_rotary_factor"] = partial
    cfg = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )
    fn = ROPE_INIT_FUNCTIONS[params["rope_type"]]
    arg = None if seq_len is None else torch.tensor(seq_len)
    return fn(cfg, "cpu", seq_len=arg)


YARN_CASES = list(
    itertools.product(
        [64, 128],  # head dim
        [1e4, 5e5],  # theta
        [2.0, 4.0, 16.0, 40.0],  # factor
        [
            {},
            {"beta_fast": 16.0, "beta_slow": 2.0},
            {"mscale": 0.707, "mscale_all_dim": 0.707},
            {"mscale": 1.0, "mscale_all_dim": 0.5},
            {"attention_factor": 1.5},
            {"truncate": False},
        ],
    )
)


@pytest.mark.parametrize("d,theta,factor,extra", YARN_CASES)
def test_yarn_matches_transformers(d, theta, factor, extra):
    rp = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": 4096, **extra}
    ref_inv, ref_att = hf(rp, d, int(4096 * factor))
    spec = RopeSpec(
        "yarn",
        rope_theta=theta,
        rotary_dim=d,
        factor=factor,
        original_max_position_embeddings=4096,
        max_position_embeddings=int(4096 * factor),
        params=extra,
    )
    inv, att = spec.frequencies()
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL_BLEND, atol=0)
    assert att == pytest.approx(ref_att, rel=1e-12)


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
@pytest.mark.parametrize("d", [64, 96, 128])
def test_linear_matches_transformers(d, factor):
    ref_inv, ref_att = hf({"rope_type": "linear", "rope_theta": 1e4, "factor": factor}, d, 4096)
    inv, att = RopeSpec("linear", rotary_dim=d, factor=factor).frequencies()
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL, atol=0)
    assert att == ref_att == 1.0


@pytest.mark.parametrize("seq_len", [1, 2048, 4096, 4097, 8192, 30000])
@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_dynamic_matches_transformers(seq_len, factor):
    # transformers' L0 is max_position_embeddings; ropepatch uses it when no original is given
    ref_inv, _ = hf({"rope_type": "dynamic", "rope_theta": 1e6, "factor": factor}, 128, 4096, seq_len=seq_len)
    spec = RopeSpec("dynamic", rope_theta=1e6, rotary_dim=128, factor=factor, max_position_embeddings=4096)
    inv, att = spec.frequencies(seq_len=seq_len)
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL, atol=0)
    assert att == 1.0


@pytest.mark.parametrize(
    "d,theta,factor,low,high,orig",
    [
        (128, 5e5, 8.0, 1.0, 4.0, 8192),
        (64, 5e5, 32.0, 1.0, 4.0, 8192),
        (128, 1e4, 4.0, 1.0, 4.0, 4096),
        (128, 5e5, 16.0, 2.0, 8.0, 8192),
    ],
)
def test_llama3_matches_transformers(d, theta, factor, low, high, orig):
    rp = {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig,
    }
    ref_inv, ref_att = hf(rp, d, 131072)
    spec = RopeSpec(
        "llama3",
        rope_theta=theta,
        rotary_dim=d,
        factor=factor,
        original_max_position_embeddings=orig,
        params={"low_freq_factor": low, "high_freq_factor": high},
    )
    inv, att = spec.frequencies()
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL, atol=0)
    assert att == ref_att


@pytest.mark.parametrize("seq_len", [None, 100, 4096, 4097, 100000])
@pytest.mark.parametrize("factor", [None, 16.0])
def test_longrope_matches_transformers(seq_len, factor):
    g = torch.Generator().manual_seed(0)
    short = (1 + torch.rand(48, generator=g)).tolist()
    long = (1 + 10 * torch.rand(48, generator=g)).tolist()
    rp = {
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "short_factor": short,
        "long_factor": long,
        "original_max_position_embeddings": 4096,
    }
    if factor is not None:
        rp["factor"] = factor
    ref_inv, ref_att = hf(rp, 96, 131072, seq_len=seq_len)
    spec = RopeSpec(
        "longrope",
        rotary_dim=96,
        factor=factor,
        original_max_position_embeddings=4096,
        max_position_embeddings=131072,
        params={"short_factor": short, "long_factor": long},
    )
    inv, att = spec.frequencies(seq_len=seq_len)
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL, atol=0)
    assert att == pytest.approx(ref_att, rel=1e-12)


def test_partial_rotary_dim_matches_transformers():
    ref_inv, _ = hf({"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, 128, 4096, partial=0.5)
    inv, _ = RopeSpec("linear", rotary_dim=64, factor=2.0).frequencies()
    assert inv.shape == ref_inv.shape == (32,)
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL, atol=0)


def test_frequencies_contract():
    spec = RopeSpec("yarn", rotary_dim=64, factor=4.0, original_max_position_embeddings=2048)
    inv, att = spec.frequencies(device="cpu")
    assert inv.dtype == torch.float32 and inv.shape == (32,) and isinstance(att, float)
    meta, _ = spec.frequencies(device="meta")
    assert meta.device.type == "meta" and meta.shape == (32,)


@pytest.mark.parametrize("factor", [2.0, 4.0, 32.0])
def test_ntk_by_parts_is_yarn_without_temperature(factor):
    """The YaRN paper's 2-way NTK-by-parts = transformers' yarn with attention_factor 1."""
    rp = {
        "rope_type": "yarn",
        "rope_theta": 1e4,
        "factor": factor,
        "original_max_position_embeddings": 2048,
        "attention_factor": 1.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    ref_inv, ref_att = hf(rp, 128, int(2048 * factor))
    spec = RopeSpec("ntk-by-parts", rotary_dim=128, factor=factor, original_max_position_embeddings=2048)
    inv, att = spec.frequencies()
    torch.testing.assert_close(inv, ref_inv, rtol=RTOL_BLEND, atol=0)
    assert att == ref_att == 1.0
