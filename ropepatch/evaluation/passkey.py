"""Passkey retrieval: hide a number at some depth in filler text and check the model reads it back.

The prompt follows the usual long-context test (a task line, repeated filler sentences, the passkey
sentence at a chosen depth, more filler, then the question). The prompt is cut to exactly the
requested number of tokens. Scoring is one teacher-forced forward pass: the model retrieves the
key when its top prediction is the right token at every position of the answer, which is exactly
when greedy decoding would print the key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["PasskeyPrompt", "PasskeyResult", "build_prompt", "min_length", "model_predictor", "passkey_accuracy"]

TASK = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class PasskeyPrompt:
    """A prompt of exactly ``len(ids)`` tokens whose last ``len(answer)`` tokens are the key."""

    ids: list[int]
    answer: list[int]
    key: str
    depth: float


@dataclass(frozen=True)
class PasskeyResult:
    """Accuracy of one method at one length and depth."""

    method: str
    length: int
    depth: float
    trials: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}


def _encode(tok: Any, text: str) -> list[int]:
    # transformers tokenizers add BOS/EOS unless told not to; a ByteCodec takes only the text
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tok.encode(text))


def build_prompt(tok: Any, length: int, depth: float, key: str, *, bos: int | None = None) -> PasskeyPrompt:
    """The passkey prompt of exactly ``length`` tokens with the key at ``depth`` (0 = start, 1 = end).

    Raises :class:`ValueError` when ``length`` is too short to hold the task, the key and the question.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    head = ([bos] if bos is not None else []) + _encode(tok, TASK)
    needle = _encode(tok, NEEDLE.format(key=key))
    question = _encode(tok, QUESTION)
    full = _encode(tok, QUESTION + " " + key)
    answer = full[len(question) :] if full[: len(question)] == question else _encode(tok, " " + key)
    tail = question + answer
    room = length - len(head) - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"a passkey prompt needs at least {length - room} tokens, got length={length}")
    filler_unit = _encode(tok, FILLER)
    filler = (filler_unit * (room // max(1, len(filler_unit)) + 1))[:room]
    before = round(depth * room)
    ids = head + filler[:before] + needle + filler[before:] + tail
    assert len(ids) == length
    return PasskeyPrompt(ids=ids, answer=answer, key=key, depth=depth)


def min_length(tok: Any, *, bos: int | None = None, digits: int = 5) -> int:
    """The shortest prompt :func:`build_prompt` can make with this tokenizer (no filler at all)."""
    key = "9" * digits
    head = (1 if bos is not None else 0) + len(_encode(tok, TASK))
    question = _encode(tok, QUESTION)
    full = _encode(tok, QUESTION + " " + key)
    return (
        head
        + len(_encode(tok, NEEDLE.format(key=key)))
        + len(full if full[: len(question)] == question else question + _encode(tok, " " + key))
    )


def model_predictor(model: Any, device: Any = None) -> Callable[[list[int]], list[int]]:
    """``predict(ids) -> top next-token id after each position`` for a local transformers model."""
    import torch

    from ropepatch.evaluation.perplexity import _model_device

    if device is None:
        device = _model_device(model)

    def predict(ids: list[int]) -> list[int]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long, device=device)).logits[0]
        return logits.argmax(dim=-1).tolist()

    return predict


def retrieved(predict: Callable[[list[int]], Sequence[int]], prompt: PasskeyPrompt) -> bool:
    """True when greedy decoding after the question would produce the key's tokens."""
    top = predict(prompt.ids)
    n = len(prompt.answer)
    start = len(prompt.ids) - n  # first answer token's position
    return [int(top[p - 1]) for p in range(start, start + n)] == list(prompt.answer)


def passkey_accuracy(
    predict: Callable[[list[int]], Sequence[int]],
    tok: Any,
    *,
    method: str,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    digits: int = 5,
    seed: int = 0,
    bos: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PasskeyResult]:
    """Retrieval accuracy for every (length, depth), ``trials`` random keys each (seeded, so every
    method sees the same keys)."""
    out = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}:{length}:{depth}")
            correct = 0
            for _ in range(trials):
                key = "".join(rng.choice("0123456789") for _ in range(digits))
                correct += retrieved(predict, build_prompt(tok, length, depth, key, bos=bos))
                if progress is not None:
                    progress(1)
            out.append(PasskeyResult(method, length, depth, trials, correct))
    return out
