"""The eval demo's shipped model reproduces two rows of docs/eval-demo.md, computed without ropepatch.

The committed numbers were written by ``examples/eval_demo/run_demo.py`` (ropepatch's eval applying each
method through its transformers adapter). Here the same windows are scored by transformers alone: plain
RoPE as the checkpoint ships, and YaRN through transformers' own ``rope_type: yarn`` implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "eval_demo"
WINDOWS = 16  # what the committed table used (docs/eval-demo-results.json "windows")


@pytest.fixture(scope="module")
def committed() -> dict:
    results = json.loads((REPO / "docs" / "eval-demo-results.json").read_text())
    assert results["windows"] == WINDOWS and results["model"] == "examples/eval_demo/model"
    assert results["text"]["source"] == "examples/eval_demo/heldout.txt"
    return {(p["method"], p["length"]): p for p in results["perplexity"]}


@pytest.fixture(scope="module")
def ids() -> list[int]:
    # what `ropepatch eval --byte-level --text` reads: the text (universal newlines), as UTF-8 bytes
    return list((DEMO / "heldout.txt").read_text(encoding="utf-8").encode("utf-8"))


def losses(model, ids: list[int], length: int) -> tuple[float, float]:
    """Mean next-token loss over WINDOWS back-to-back windows, and over each window's last quarter."""
    total = tail = 0.0
    n = n_tail = 0
    with torch.no_grad():
        for w in range(WINDOWS):
            window = torch.tensor([ids[w * length : (w + 1) * length]])
            logits = model(input_ids=window).logits[0, :-1].float()
            per_token = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none").double()
            total, n = total + float(per_token.sum()), n + per_token.numel()
            quarter = per_token[-(length // 4) :]
            tail, n_tail = tail + float(quarter.sum()), n_tail + quarter.numel()
    return total / n, tail / n_tail


def test_the_shipped_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in (DEMO / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= set(files)
    assert sum(files.values()) < 5 * 2**20, files
    assert (DEMO / "heldout.txt").stat().st_size == 400_000


def test_plain_rope_row(committed, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEMO / "model").eval()
    length = 512  # 4x past the training length, where plain RoPE degrades
    nll, tail = losses(model, ids, length)
    row = committed[("default", length)]
    assert nll == pytest.approx(row["nll"], abs=2e-3)
    assert tail == pytest.approx(row["tail_nll"], abs=2e-3)
    assert row["tail_nll"] > committed[("default", 128)]["tail_nll"] + 0.3


def test_yarn_row_matches_transformers_own_yarn(committed, ids):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(DEMO / "model")
    factor, original = 16.0, config.max_position_embeddings
    yarn = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    if hasattr(config, "rope_parameters"):  # transformers 5: theta lives in the same dict
        config.rope_parameters = {**yarn, "rope_theta": 10000.0}
    else:
        config.rope_scaling = yarn
    config.max_position_embeddings = int(original * factor)
    model = AutoModelForCausalLM.from_pretrained(DEMO / "model", config=config).eval()
    length = 1024
    nll, tail = losses(model, ids, length)
    row = committed[("yarn", length)]
    assert nll == pytest.approx(row["nll"], abs=2e-3)
    assert tail == pytest.approx(row["tail_nll"], abs=2e-3)
    # the demo's point: at 8x, YaRN holds where plain RoPE has blown up
    assert row["tail_nll"] < committed[("default", length)]["tail_nll"] - 0.2
