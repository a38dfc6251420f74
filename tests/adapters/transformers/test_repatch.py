"""patch_model can be called again with other settings: each call starts from the config as loaded."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ropepatch  # noqa: E402
from ropepatch import RopeSpec  # noqa: E402


def test_repeated_patch_model_starts_from_the_loaded_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1e4},
    )
    model = LlamaForCausalLM(cfg)
    yarn = RopeSpec("yarn", rotary_dim=32, factor=4.0, original_max_position_embeddings=64)
    steps = [
        (dict(method="ntk", alpha=2.0), RopeSpec("ntk", rotary_dim=32, params={"alpha": 2.0})),
        (dict(method="default"), RopeSpec("default", rotary_dim=32)),
        (
            dict(method="linear", factor=2.0),
            RopeSpec("linear", rotary_dim=32, factor=2.0, original_max_position_embeddings=64),
        ),
        ({}, yarn),  # back to what the checkpoint says
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for overrides, expected in steps:
            ropepatch.patch_model(model, **overrides)
            rope = model.model.rotary_emb
            inv, attention = expected.frequencies()
            torch.testing.assert_close(rope.inv_freq, inv, rtol=2e-6, atol=0)
            assert rope.attention_scaling == pytest.approx(attention), overrides
    # the config still describes the checkpoint as loaded to anyone who reads it
    assert ropepatch.detect(cfg).method == "yarn"
