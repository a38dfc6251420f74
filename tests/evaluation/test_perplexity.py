"""Windows, tail scoring and log-probabilities, checked against transformers' own loss."""

from __future__ import annotations

import math

import pytest
import torch
from eval_tiny import hf_window_losses, make_tiny_llama

from ropepatch.evaluation import perplexity
from ropepatch.evaluation.perplexity import (
    cut_windows,
    model_scorer,
    perplexity_at_length,
    score_window,
    token_logprobs,
)


def test_windows_back_to_back_with_and_without_bos():
    ids = list(range(10))
    assert cut_windows(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert cut_windows(ids, 4, bos=99) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]
    assert cut_windows(ids, 4, stride=2, max_windows=3) == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert cut_windows(ids, 11) == []
    with pytest.raises(ValueError):
        cut_windows(ids, 1)


def test_tail_is_the_last_quarter_of_window_positions():
    # an 8-token window predicts tokens 1..7; its last quarter is positions 6 and 7
    s = score_window([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0], 0.25)
    assert (s.nll_sum, s.tokens, s.tail_nll_sum, s.tail_tokens) == (28.0, 7, 13.0, 2)
    # 128-token window: positions 96..127 -> 32 tail tokens
    assert score_window([-1.0] * 127).tail_tokens == 32


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama()


def test_token_logprobs_match_transformers_loss(model):
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    lp = token_logprobs(model, ids)
    assert lp.shape == (2, 39)
    for row in range(2):
        with torch.no_grad():
            loss = float(model(input_ids=ids[row : row + 1], labels=ids[row : row + 1]).loss)
        assert float(-lp[row].mean()) == pytest.approx(loss, rel=1e-5)


def test_chunked_vocabulary_projection_matches_full_logits(model, monkeypatch):
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(2))
    full = token_logprobs(model, ids)
    monkeypatch.setattr(perplexity, "_LOGIT_BUDGET", 256 * 7)  # forces 7-position chunks
    chunked = token_logprobs(model, ids)
    assert torch.allclose(full, chunked, atol=1e-5)


def test_perplexity_point_is_token_weighted_mean_of_transformers_losses(model):
    ids = list(torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(3)).tolist())
    windows = cut_windows(ids, 48, max_windows=3)
    point = perplexity_at_length(model_scorer(model), windows, method="m", length=48)
    ref = hf_window_losses(model, windows)
    mean_loss = sum(loss for loss, _ in ref) / len(ref)  # equal windows: token-weighted == plain mean
    tail = [x for _, per_token in ref for x in per_token[35:]]  # positions 36..47 -> targets 35..46
    assert point.windows == 3 and point.tokens == 3 * 47 and point.tail_tokens == 3 * 12
    assert point.nll == pytest.approx(mean_loss, rel=1e-5)
    assert point.ppl == pytest.approx(math.exp(mean_loss), rel=1e-5)
    assert point.tail_nll == pytest.approx(sum(tail) / len(tail), rel=1e-5)
    d = point.to_dict()
    assert d["method"] == "m" and d["length"] == 48
