"""``ropepatch doctor`` on real checkpoint configs from the checkpoint corpus (tests/data/checkpoints): the verdicts, and the
frequencies behind them checked against independent references (tests/data/reference/test-vectors.json
and closed forms), not against ropepatch's own numbers.
"""

from __future__ import annotations

import json
import math

import pytest
from doctor_paths import CORPUS, NATIVE_LEGACY_SU

import ropepatch
from ropepatch.adapters.transformers.probe import TransformersProbe
from ropepatch.doctor.diagnose import _prepare, diagnose
from ropepatch.registry import get_registry

HAS_ADAPTER = get_registry().adapters.get("transformers") is not None
needs_adapter = pytest.mark.skipif(not HAS_ADAPTER, reason="needs ropepatch's transformers adapter registered")

# (file, native verdict, verdict with ropepatch)
CASES = [
    # legacy 'su': KeyError in transformers 5.0-5.24, right on its own from 5.25
    ("microsoft__Phi-3-vision-128k-instruct", "matches" if NATIVE_LEGACY_SU else "fails", "matches"),
    ("bhenrym14__airophin-13b-pntk-16k-fp16", "wrong", "matches"),  # top-level original: silently plain RoPE
    ("meta-llama__Llama-3.1-8B-Instruct", "matches", "matches"),
    ("NousResearch__Yarn-Llama-2-13b-128k", "matches", "matches"),
    ("deepseek-ai__DeepSeek-V3", "matches", "matches"),
    ("Qwen__Qwen-7B-Chat", "unsupported", "unsupported"),  # remote code: no native class
    ("internlm__internlm2_5-7b", "unsupported", "unsupported"),
]


def vector(case_id: str) -> dict:
    data = json.loads((CORPUS.parent / "reference" / "test-vectors.json").read_text())
    return next(c for c in data["cases"] if c["id"] == case_id)["expected"]


def transformers_rope(path, *, patched: bool, seq_len: int):
    """What the transformers probe computes, alone or inside ropepatch.enabled()."""
    _, config, _ = _prepare(path)
    probe = TransformersProbe()
    if not patched:
        return probe.compute(config, seq_len, patched=False)
    with ropepatch.enabled(runtimes=("transformers",)):
        return probe.compute(config, seq_len, patched=True)


def assert_vector(inv, expected, rel=3.3e-7 * 4):
    for key, value in expected.items():
        if key.startswith("inv_freq["):
            i = int(key[len("inv_freq[") : -1])
            assert inv[i] == pytest.approx(value, rel=rel), key


@pytest.mark.parametrize("name,native,patched", CASES, ids=[c[0] for c in CASES])
def test_verdicts(corpus, name, native, patched):
    report = diagnose(corpus / f"{name}.json", probes=[TransformersProbe()])
    (tf,) = report["runtimes"]
    assert tf["native"]["verdict"] == native, tf["native"]
    if HAS_ADAPTER:
        assert tf["with_ropepatch"]["verdict"] == patched, tf["with_ropepatch"]
    else:
        assert tf["with_ropepatch"]["verdict"] == "no-adapter"


def test_phi3_su_fails_alone_and_loads_longrope_with_ropepatch(corpus):
    path = corpus / "microsoft__Phi-3-vision-128k-instruct.json"
    alone = transformers_rope(path, patched=False, seq_len=131072)
    long_factor = json.loads(path.read_text())["rope_scaling"]["long_factor"]
    d = 2 * len(long_factor)  # 96

    def assert_longrope(comp):
        # LongRoPE past the original context: inv_freq[i] = 1 / (long_factor[i] * base^(2i/d))
        for i in (0, 10, len(long_factor) - 1):
            assert comp.inv_freq[i] == pytest.approx(1 / (long_factor[i] * 10000 ** (2 * i / d)), rel=1e-6)
        assert comp.attention_factor == pytest.approx(
            vector("longrope_attention_s32_orig4096")["attention_factor"], rel=1e-7
        )

    if NATIVE_LEGACY_SU:
        assert_longrope(alone)
    else:
        assert alone.status == "fails" and "KeyError" in alone.error
        assert "original_max_position_embeddings" in alone.error
    if not HAS_ADAPTER:
        pytest.skip("needs ropepatch's transformers adapter registered")
    assert_longrope(transformers_rope(path, patched=True, seq_len=131072))


def test_airophin_is_plain_rope_alone_and_3way_partial_ntk_with_ropepatch(corpus):
    path = corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json"
    alone = transformers_rope(path, patched=False, seq_len=16384)
    assert alone.status == "ok" and "rope_type='default'" in alone.detail
    assert_vector(alone.inv_freq, vector("default"))  # silently unscaled
    if not HAS_ADAPTER:
        pytest.skip("needs ropepatch's transformers adapter registered")
    fixed = transformers_rope(path, patched=True, seq_len=16384)
    assert_vector(fixed.inv_freq, vector("ntk_by_parts_3way_s4"))
    assert fixed.attention_factor == 1.0


def test_llama31_and_deepseek_match_published_vectors_alone(corpus):
    llama = transformers_rope(corpus / "meta-llama__Llama-3.1-8B-Instruct.json", patched=False, seq_len=131072)
    assert_vector(llama.inv_freq, vector("llama3_d128_s8"))
    ds = transformers_rope(corpus / "deepseek-ai__DeepSeek-V3.json", patched=False, seq_len=163840)
    assert len(ds.inv_freq) == 32  # rotary size from qk_rope_head_dim, not a guessed head_dim
    assert_vector(ds.inv_freq, vector("deepseek_v3_yarn"))


@needs_adapter
def test_pi_named_checkpoint_gets_linear_inside_transformers(corpus):
    report = diagnose(corpus / "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192.json", probes=[TransformersProbe()])
    (tf,) = report["runtimes"]
    assert tf["native"]["verdict"] == "wrong"
    assert tf["with_ropepatch"]["verdict"] == "matches"


def test_missing_dimensions_are_filled_and_said(corpus):
    report = diagnose(corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json")
    assert any("head_dim 128 assumed" in n for n in report["notes"])
    assert report["seq_len"] == 16384 and report["method"] == "part-ntk"
    assert math.isclose(report["reference"]["inv_freq_first"], 1.0)
