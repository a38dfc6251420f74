"""Eleven families, saved as checkpoints whose metadata asks for a method transformers lacks, reloaded
with ``from_pretrained`` in a fresh interpreter under ``ropepatch.enable()``.

Each checkpoint is checked three ways: the rotary module's cos/sin equal the reference table from
``spec.frequencies`` (static: every position; dynamic: short, long, then short again, which also
catches transformers' stale attention factor on reset); the logits equal those of the same weights
loaded without ropepatch with the reference table set by hand; ``generate()`` works with a KV cache
(and, for static methods, gives the same tokens as without a cache).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import run_fresh
from tf_tiny import FAMILIES, L0, make_config, make_model

torch = pytest.importorskip("torch")

PARTIAL = {"gpt_neox"}  # rotates a slice of the head: methods with a temperature are refused there
SHORT, LONG = 32, 200  # lengths below and far above the original context L0=64
PROMPT = 60  # generating 8 tokens from here crosses L0=64 while decoding


def _dynamic_metadata(family: str, theta: float) -> dict[str, Any]:
    if family in PARTIAL:
        # transformers' own "dynamic" grows only past max_position_embeddings (256); with an
        # original context of 64 the numbers differ, so ropepatch computes it
        return {"rope_type": "dynamic", "rope_theta": theta, "factor": 4.0, "original_max_position_embeddings": L0}
    return {"rope_type": "dynamic-yarn", "rope_theta": theta, "factor": 4.0, "original_max_position_embeddings": L0}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: Any) -> dict[str, Path]:
    """``{family-kind: folder}``: plain weights saved once per family, metadata edited per case."""
    import ropepatch

    ropepatch.disable()
    root = tmp_path_factory.mktemp("ckpt")
    out: dict[str, Path] = {}
    for family in FAMILIES:
        base = root / f"{family}-plain"
        make_model(make_config(family)).save_pretrained(base)
        out[f"{family}-plain"] = base
        config = json.loads((base / "config.json").read_text())
        theta = config["rope_parameters"]["rope_theta"]
        partial = {k: v for k, v in config["rope_parameters"].items() if k == "partial_rotary_factor"}
        # static: bhenrym14's partial-NTK convention (top-level original, no rope_scaling)
        static = dict(config, original_max_position_embeddings=L0)
        dynamic = dict(config, rope_parameters={**_dynamic_metadata(family, theta), **partial})
        for kind, data in (("static", static), ("dynamic", dynamic)):
            folder = root / f"{family}-{kind}"
            shutil.copytree(base, folder)
            (folder / "config.json").write_text(json.dumps(data))
            out[f"{family}-{kind}"] = folder
    return out


@pytest.fixture(scope="module")
def fresh_results(checkpoints: dict[str, Path], tmp_path_factory: Any) -> dict[str, Any]:
    """Load every scaled checkpoint in one fresh interpreter; tensors come back through torch.save."""
    out_dir = tmp_path_factory.mktemp("fresh")
    cases = {k: str(v) for k, v in checkpoints.items() if not k.endswith("-plain")}
    code = f"""
import json, torch, ropepatch
ropepatch.enable()
from transformers import AutoModelForCausalLM
from tf_tiny import rotary_of
cases = {json.dumps(cases)}
summary = {{}}
torch.manual_seed(0)
ids = torch.randint(0, 128, (1, {LONG}))
for name, path in cases.items():
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits[0]  # first call: a dynamic module grows from its initial state
    prompt = ids[:, :{PROMPT}]
    cached = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    rot = rotary_of(model)
    x = torch.zeros(1, dtype=torch.float32)
    calls = []
    for L in ({SHORT}, {LONG}, {SHORT}):  # after generate() grew it: reset, grow, reset
        cos, sin = rot(x, torch.arange(L)[None])
        calls.append((L, cos[0].clone(), sin[0].clone()))
    file = "{out_dir}/" + name + ".pt"
    torch.save({{"calls": calls, "logits": logits, "cached": cached, "uncached": uncached}}, file)
    summary[name] = {{"file": file, "rope_type": str(rotary_of(model).rope_type)}}
print(json.dumps(summary))
"""
    return run_fresh(code, timeout=600)


def _reference(spec: Any, length: int | None, positions: int) -> tuple[Any, Any]:
    """cos/sin of the reference table, computed the way transformers' forward does (float32)."""
    inv, attention = spec.frequencies(length)
    freqs = torch.arange(positions)[:, None].float() * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention, emb.sin() * attention


CASES = [f"{f}-{k}" for f in FAMILIES for k in ("static", "dynamic")]


@pytest.mark.parametrize("case", CASES)
def test_rotary_table_after_fresh_reload(
    case: str, checkpoints: dict[str, Path], fresh_results: dict[str, Any]
) -> None:
    import ropepatch

    spec = ropepatch.detect(checkpoints[case], emit_warnings=False)
    result = fresh_results[case]
    assert result["rope_type"].startswith("ropepatch_"), result
    calls = torch.load(result["file"])["calls"]
    expected_lengths = [None, LONG, None] if spec.is_dynamic else [None, None, None]
    for (L, cos, sin), length in zip(calls, expected_lengths, strict=True):
        ref_cos, ref_sin = _reference(spec, length, L)
        assert torch.allclose(cos, ref_cos, rtol=0, atol=2e-6), (case, L, (cos - ref_cos).abs().max())
        assert torch.allclose(sin, ref_sin, rtol=0, atol=2e-6), (case, L, (sin - ref_sin).abs().max())
    if spec.is_dynamic:
        # the long call must really differ from the short one, or the test proves nothing
        assert not torch.allclose(calls[1][1][:SHORT], calls[0][1], atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_hand_set_reference_table(
    case: str, checkpoints: dict[str, Path], fresh_results: dict[str, Any]
) -> None:
    from tf_tiny import rotary_of
    from transformers import AutoModelForCausalLM

    import ropepatch

    ropepatch.disable()
    spec = ropepatch.detect(checkpoints[case], emit_warnings=False)
    family = case.rsplit("-", 1)[0]
    model = AutoModelForCausalLM.from_pretrained(checkpoints[f"{family}-plain"], dtype=torch.float32).eval()
    rot = rotary_of(model)
    inv, attention = spec.frequencies(LONG if spec.is_dynamic else None)  # the input below is LONG tokens
    rot.inv_freq = inv.clone()
    rot.original_inv_freq = inv.clone()
    rot.attention_scaling = attention
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (1, LONG))
    with torch.no_grad():
        expected = model(ids).logits[0]
    got = torch.load(fresh_results[case]["file"])["logits"]
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), (case, (got - expected).abs().max())
    # and the scaling matters: unscaled logits are far from these
    plain = AutoModelForCausalLM.from_pretrained(checkpoints[f"{family}-plain"], dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits[0], got, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_generate_with_kv_cache(case: str, fresh_results: dict[str, Any]) -> None:
    data = torch.load(fresh_results[case]["file"])
    assert data["cached"].shape == (1, PROMPT + 8)
    if case.endswith("-static"):
        # a static table rotates cached keys exactly as a full recomputation does
        assert torch.equal(data["cached"], data["uncached"])


def test_fresh_reload_covers_eight_families(fresh_results: dict[str, Any]) -> None:
    assert len({k.rsplit("-", 1)[0] for k in fresh_results}) >= 8
