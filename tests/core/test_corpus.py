"""Every real checkpoint in tests/data/checkpoints, classified as its INDEX.md row says."""

from __future__ import annotations

import math
import warnings

import pytest

import ropepatch

# file stem -> what INDEX.md says ropepatch must conclude
EXPECTED = {
    "meta-llama__Llama-2-7b-hf": dict(method="default", theta=1e4),
    "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192": dict(method="linear", factor=4.0, original=2048, context=8192),
    "bhenrym14__airoboros-l2-13b-2.1-PI-16k-fp16": dict(method="linear", factor=4.0),
    "mistralai__Mistral-7B-v0.3": dict(method="default", theta=1e6, note="baked"),
    "amazon__MistralLite": dict(method="default", theta=1e6, note="baked"),
    "emozilla__NTK-Llama-2-7b-8k": dict(method="default", theta=2e4, note="alpha_eff = 1.978"),
    "Qwen__Qwen-7B-Chat": dict(method="qwen-dynamic-ntk", original=2048, dynamic=True),
    "internlm__internlm2_5-7b": dict(method="dynamic", factor=2.0, theta=1e6, dynamic=True),
    "amazon__FalconLite": dict(method="dynamic-ntk-unclamped", original=2048, dynamic=True),
    "amazon__FalconLite2": dict(method="default", theta=1e6),
    "bhenrym14__airophin-13b-pntk-16k-fp16": dict(method="part-ntk", factor=4.0, original=4096, context=16384),
    "NousResearch__Yarn-Llama-2-13b-128k": dict(method="yarn", factor=32.0, original=4096, context=131072),
    "NousResearch__Yarn-Mistral-7b-128k.gguf": dict(method="yarn", factor=16.0, original=8192, context=131072),
    "Qwen__Qwen2.5-7B-Instruct": dict(method="default", theta=1e6),
    "Qwen__Qwen3-0.6B": dict(method="default", theta=1e6),
    "deepseek-ai__DeepSeek-V2-Lite.gguf": dict(
        method="yarn", factor=40.0, original=4096, attention=1.0, softmax=1.5896261651208736
    ),
    "deepseek-ai__DeepSeek-V3": dict(
        method="yarn", factor=40.0, original=4096, attention=1.0, softmax=1.8738542070926265
    ),
    "deepseek-ai__DeepSeek-V3__inference-ModelArgs": dict(
        method="yarn", factor=40.0, original=4096, attention=1.0, softmax=1.8738542070926265
    ),
    "openai__gpt-oss__original-ModelConfig": dict(
        method="yarn", factor=32.0, original=4096, attention=1.3465735902799727, truncate=False
    ),
    "microsoft__Phi-3-vision-128k-instruct": dict(
        method="longrope", original=4096, context=131072, attention=math.sqrt(1 + math.log(32) / math.log(4096))
    ),
    "microsoft__Phi-3.5-mini-instruct": dict(method="longrope", original=4096, attention=1.1902380714238083),
    "meta-llama__Llama-3.1-8B-Instruct": dict(method="llama3", factor=8.0, original=8192, theta=5e5, context=131072),
    "lightonai__alfred-40b-1023": dict(
        method="ntk-yarn", factor=4.0, original=2048, attention=1.138629436111989, warn="custom code"
    ),
}


def test_every_corpus_file_has_an_expectation(checkpoints_dir):
    stems = {p.name[: -len(".json")] for p in checkpoints_dir.glob("*.json")}
    assert stems == set(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_corpus_checkpoint(stem, checkpoints_dir):
    exp = EXPECTED[stem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = ropepatch.detect(checkpoints_dir / f"{stem}.json")
    assert spec.method == exp["method"]
    assert spec.provenance.get("method"), "provenance must say where the method came from"
    if "factor" in exp:
        assert spec.effective_factor == exp["factor"]
    if "original" in exp:
        assert spec.effective_original == exp["original"]
    if "theta" in exp:
        assert spec.rope_theta == exp["theta"]
    if "context" in exp:
        assert spec.effective_context == exp["context"]
    if "dynamic" in exp:
        assert spec.is_dynamic is exp["dynamic"]
    if "attention" in exp:
        assert spec.attention_factor(None if not spec.is_dynamic else 10**6) == pytest.approx(
            exp["attention"], rel=1e-12
        )
    if "softmax" in exp:
        assert spec.softmax_scale == pytest.approx(exp["softmax"], rel=1e-12)
    if "truncate" in exp:
        assert spec.method_params["truncate"] is exp["truncate"]
    if "note" in exp:
        assert any(exp["note"] in n for n in spec.notes), spec.notes
    if "warn" in exp:
        assert any(exp["warn"] in w for w in spec.warnings), spec.warnings
    # every spec round-trips through JSON
    assert ropepatch.RopeSpec.from_dict(spec.to_dict()) == spec


def test_qwen3_inflated_context_is_not_a_scale(checkpoints_dir):
    spec = ropepatch.detect(checkpoints_dir / "Qwen__Qwen3-0.6B.json")
    assert spec.method == "default"
    assert spec.original_max_position_embeddings == 32768  # 40960 is 32768 + a generation budget
    # target-context mode: YaRN x4 to 131072, as the Qwen3 card tells users to add by hand
    extended = ropepatch.detect(checkpoints_dir / "Qwen__Qwen3-0.6B.json", target_context=131072)
    assert (extended.method, extended.effective_factor, extended.effective_original) == ("yarn", 4.0, 32768)


def test_provenance_names_the_file_and_key(checkpoints_dir):
    spec = ropepatch.detect(checkpoints_dir / "NousResearch__Yarn-Llama-2-13b-128k.json")
    assert spec.provenance["factor"] == "NousResearch__Yarn-Llama-2-13b-128k.json:rope_scaling.factor"
    spec = ropepatch.detect(checkpoints_dir / "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192.json")
    assert spec.provenance["factor"].startswith("known checkpoint table")


def test_legacy_su_reads_the_top_level_original(checkpoints_dir):
    spec = ropepatch.detect(checkpoints_dir / "microsoft__Phi-3-vision-128k-instruct.json")
    assert spec.provenance["original_max_position_embeddings"].endswith(":original_max_position_embeddings")
    assert len(spec.method_params["long_factor"]) == spec.rotary_dim // 2
