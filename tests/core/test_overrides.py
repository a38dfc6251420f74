"""Overrides: explicit > $ROPEPATCH > known-checkpoint table > metadata, with provenance; strict parsing."""

from __future__ import annotations

import warnings

import pytest

import ropepatch
from ropepatch import RopeConfigError
from ropepatch.overrides import parse_overrides

YARN = {
    "model_type": "llama",
    "head_dim": 64,
    "hidden_size": 128,
    "num_attention_heads": 2,
    "max_position_embeddings": 16384,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
}
PLAIN = {
    "model_type": "qwen2",
    "head_dim": 64,
    "hidden_size": 128,
    "num_attention_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "_name_or_path": "Qwen/Qwen2.5-7B-Instruct",
}


def detect(data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ropepatch.detect(data, **kw)


def test_explicit_beats_env_beats_metadata(monkeypatch):
    assert detect(YARN).effective_factor == 4.0
    monkeypatch.setenv("ROPEPATCH", "yarn:factor=8")
    env = detect(YARN)
    assert env.effective_factor == 8.0 and env.provenance["factor"] == "env ROPEPATCH"
    explicit = detect(YARN, factor=2.0)
    assert explicit.effective_factor == 2.0 and explicit.provenance["factor"] == "explicit"
    assert explicit.effective_original == 4096  # untouched values keep their metadata provenance
    assert explicit.provenance["original_max_position_embeddings"].endswith(
        "rope_scaling.original_max_position_embeddings"
    )


def test_env_beats_known_table(monkeypatch, checkpoints_dir):
    path = checkpoints_dir / "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192.json"
    assert detect(path).effective_factor == 4.0
    monkeypatch.setenv("ROPEPATCH", "factor=2")
    spec = detect(path)
    assert spec.effective_factor == 2.0 and spec.method == "linear"


def test_method_change_drops_old_parameters():
    spec = detect(YARN, method="ntk", alpha=3.0)
    assert spec.method == "ntk" and spec.method_params == {"alpha": 3.0}
    assert spec.provenance["method"] == "explicit"


def test_env_syntax(monkeypatch):
    ov = parse_overrides("yarn:factor=4,original_max_position_embeddings=4096; Qwen/*@target_context=131072")
    assert ov[0].method == "yarn" and ov[0].values == {"factor": 4, "original_max_position_embeddings": 4096}
    assert ov[1].pattern == "Qwen/*" and ov[1].target_context == 131072
    monkeypatch.setenv("ROPEPATCH", "target_context=131072")
    spec = detect(PLAIN)
    assert (spec.method, spec.effective_factor, spec.effective_original) == ("yarn", 4.0, 32768)
    assert "target_context" in spec.provenance["method"]


def test_per_model_mapping_only_touches_matching_models():
    mapping = {"Qwen/*": {"target_context": 65536}}
    assert detect(PLAIN, per_model=mapping).effective_factor == 2.0
    assert detect(YARN, per_model=mapping).effective_factor == 4.0


def test_target_context_leaves_scaled_checkpoints_and_short_targets_alone():
    spec = detect(YARN, target_context=131072)
    assert spec.effective_factor == 4.0 and any("already carries yarn" in n for n in spec.notes)
    short = detect(PLAIN, target_context=8192)
    assert short.method == "default"
    named = detect(YARN, target_context=131072, method="yarn")
    assert named.effective_factor == 32.0  # naming the method asks for the re-derivation
    other = detect(PLAIN, target_context=65536, method="dynamic-yarn")
    assert other.method == "dynamic-yarn" and other.effective_factor == 2.0


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("yarn:factr=4", "did you mean 'factor'"),
        ("yran:factor=4", "did you mean 'yarn'"),
        ("yarn:factor", "expected key=value"),
        ("target_context=-5", "positive"),
        ("orginal_max_position_embeddings=4096", "did you mean 'original_max_position_embeddings'"),
    ],
)
def test_strict_parsing(text, fragment):
    with pytest.raises(RopeConfigError, match=fragment):
        parse_overrides(text)


def test_enable_rejects_typos_before_any_model_loads(monkeypatch):
    monkeypatch.setenv("ROPEPATCH", "yarn:betta_fast=8")
    with pytest.raises(RopeConfigError, match="beta_fast"):
        ropepatch.enable()
    assert not ropepatch.is_enabled()
    monkeypatch.delenv("ROPEPATCH")
    with pytest.raises(RopeConfigError, match="factor"):
        ropepatch.enable(facto=2)
    assert not ropepatch.is_enabled()


def test_the_spec_records_which_values_an_override_set(monkeypatch, checkpoints_dir):
    # the record adapters decide on ("was this overridden?"), filled where the layers are applied
    assert detect(YARN).overridden == frozenset()
    assert detect(YARN, factor=8.0).overridden == {"factor"}
    assert detect(YARN, method="ntk", alpha=3.0).overridden == {"method", "alpha"}
    # the known-checkpoint table is detection, not an override
    assert detect(checkpoints_dir / "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192.json").overridden == frozenset()
    monkeypatch.setenv("ROPEPATCH", "target_context=131072")
    extended = detect(PLAIN)
    assert {"method", "factor", "original_max_position_embeddings"} <= extended.overridden
    monkeypatch.delenv("ROPEPATCH")
    assert detect(PLAIN, per_model={"Llama/*": {"factor": 2}}).overridden == frozenset()  # not this model
    # an ignored target (the checkpoint already scales) overrides nothing
    assert detect(YARN, target_context=131072).overridden == frozenset()


def test_the_override_record_survives_a_json_round_trip():
    spec = detect(YARN, factor=8.0, beta_fast=16)
    back = ropepatch.RopeSpec.from_dict(spec.to_dict())
    assert back == spec and back.overridden == {"factor", "beta_fast"}
    assert spec.to_dict()["overridden"] == ["beta_fast", "factor"]
    with pytest.raises(RopeConfigError, match="overridden"):
        ropepatch.RopeSpec(method="default", overridden="factor")
