"""Passkey prompts are exactly as long as asked, hide the key at the asked depth, and score greedily."""

from __future__ import annotations

import pytest
from eval_tiny import make_tiny_llama

from ropepatch.evaluation.byte_tokens import ByteCodec, byte_level_tokenizer
from ropepatch.evaluation.passkey import (
    NEEDLE,
    QUESTION,
    build_prompt,
    min_length,
    model_predictor,
    passkey_accuracy,
    retrieved,
)

codec = ByteCodec()


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_prompt_length_key_position_and_answer(depth):
    p = build_prompt(codec, 400, depth, "40217")
    text = bytes(p.ids).decode()
    assert len(p.ids) == 400
    assert text.endswith(QUESTION + " 40217")
    assert bytes(p.answer) == b" 40217"
    needle_at = text.index(NEEDLE.format(key="40217"))
    room = 400 - len(text.encode()) + len(text)  # ascii: bytes == characters
    head = text.index("quiz you about it.\n") + len("quiz you about it.\n")
    filler_total = len(text) - len(NEEDLE.format(key="40217")) - head - len(QUESTION + " 40217")
    assert room == 400
    assert needle_at - head == round(depth * filler_total)


def test_prompt_with_bos_and_too_short():
    p = build_prompt(codec, 300, 0.5, "11111", bos=7)
    assert p.ids[0] == 7 and len(p.ids) == 300
    shortest = min_length(codec)
    assert len(build_prompt(codec, shortest, 0.5, "11111").ids) == shortest
    with pytest.raises(ValueError, match=f"at least {shortest} tokens"):
        build_prompt(codec, shortest - 1, 0.5, "11111")


def test_same_prompt_through_a_transformers_tokenizer():
    # the byte-level fast tokenizer saved with the demo model encodes like the codec
    assert build_prompt(byte_level_tokenizer(), 256, 0.25, "90210").ids == build_prompt(codec, 256, 0.25, "90210").ids


def test_retrieved_is_greedy_decoding_of_the_answer():
    p = build_prompt(codec, 300, 0.3, "55555")
    oracle = lambda ids: [*ids[1:], 0]  # noqa: E731 - predicts every next token right
    assert retrieved(oracle, p)
    wrong_last = lambda ids: [*ids[1:-1], 0, 0]  # noqa: E731 - misses only the key's last digit
    assert not retrieved(wrong_last, p)


def test_accuracy_grid_on_a_tiny_model_is_reproducible():
    model = make_tiny_llama()
    kw = dict(method="default", lengths=[260], depths=[0.0, 1.0], trials=2, seed=3)
    rows = passkey_accuracy(model_predictor(model), codec, **kw)
    assert [(r.length, r.depth, r.trials) for r in rows] == [(260, 0.0, 2), (260, 1.0, 2)]
    assert all(0 <= r.correct <= 2 for r in rows)
    again = passkey_accuracy(model_predictor(model), codec, **kw)
    assert [r.correct for r in rows] == [r.correct for r in again]
    assert rows[0].to_dict()["accuracy"] == rows[0].correct / 2
