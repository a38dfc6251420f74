"""Perplexity by context length: score windows of L tokens cut from one text, for several L.

Each window is scored on its own (no carried-over context), so a window of L tokens asks the model
to use positions 0..L-1; that is what shows whether a RoPE scaling holds past the training length.
Every window is scored twice: over all its predicted tokens, and over its last quarter only (the
tokens that sit furthest out; averaging over the whole window hides much of a failing method's
damage, because the early tokens sit inside the trained range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "PerplexityPoint",
    "WindowScore",
    "cut_windows",
    "model_scorer",
    "perplexity_at_length",
    "score_window",
    "token_logprobs",
]

#: scoring chunks of the vocabulary projection when full logits would exceed this many floats
_LOGIT_BUDGET = 1 << 27


@dataclass(frozen=True)
class WindowScore:
    """Summed negative log-likelihood (nats) over a window's predicted tokens and over its tail."""

    nll_sum: float
    tokens: int
    tail_nll_sum: float
    tail_tokens: int


@dataclass(frozen=True)
class PerplexityPoint:
    """One method at one context length, averaged over its windows (token-weighted)."""

    method: str
    length: int
    windows: int
    tokens: int
    nll: float
    ppl: float
    tail_tokens: int
    tail_nll: float
    tail_ppl: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite values become ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def cut_windows(
    ids: Sequence[int], length: int, *, max_windows: int | None = 8, stride: int | None = None, bos: int | None = None
) -> list[list[int]]:
    """Windows of exactly ``length`` tokens from ``ids``, ``stride`` apart (default: back to back).

    With ``bos`` each window starts with that token and takes ``length - 1`` tokens of text, as a
    model that was trained with a BOS token expects. Returns fewer windows (maybe none) when the
    text is too short.
    """
    if length < 2:
        raise ValueError(f"a window needs at least 2 tokens, got length={length}")
    body = length - (1 if bos is not None else 0)
    step = stride or body
    if step < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    out: list[list[int]] = []
    start = 0
    while start + body <= len(ids) and (max_windows is None or len(out) < max_windows):
        chunk = [int(t) for t in ids[start : start + body]]
        out.append([bos, *chunk] if bos is not None else chunk)
        start += step
    return out


def token_logprobs(model: Any, input_ids: Any) -> Any:
    """Log-probability of each next token: a ``[batch, L-1]`` float32 tensor for ``[batch, L]`` ids.

    Uses the model's own forward pass (so whatever RoPE the model carries is what is measured). When
    full logits would be large, runs the decoder once and projects the vocabulary in chunks.
    """
    import torch

    batch, length = input_ids.shape
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    targets = input_ids[:, 1:]
    with torch.no_grad():
        if vocab == 0 or batch * length * vocab <= _LOGIT_BUDGET or not _can_chunk(model):
            logits = model(input_ids=input_ids).logits[:, :-1].float()
            return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        cap = getattr(model.config, "final_logit_softcapping", None)
        step = max(1, _LOGIT_BUDGET // (batch * vocab))
        parts = []
        for a in range(0, length - 1, step):
            logits = head(hidden[:, a : a + step]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            lp = torch.log_softmax(logits, dim=-1)
            parts.append(lp.gather(-1, targets[:, a : a + step].unsqueeze(-1)).squeeze(-1))
        return torch.cat(parts, dim=1)


def _can_chunk(model: Any) -> bool:
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def score_window(logprobs: Sequence[float], tail_fraction: float = 0.25) -> WindowScore:
    """Sum a window's next-token log-probabilities into a :class:`WindowScore`.

    ``logprobs[i]`` is the log-probability of token ``i + 1`` of the window. The tail is the tokens
    at window positions ``>= (1 - tail_fraction) * L``.
    """
    values = [float(x) for x in logprobs]
    n = len(values)
    length = n + 1
    first_tail = math.ceil((1.0 - tail_fraction) * length)  # window position of the first tail token
    tail = values[max(0, first_tail - 1) :]
    return WindowScore(-sum(values), n, -sum(tail), len(tail))


def _combine(method: str, length: int, scores: Sequence[WindowScore]) -> PerplexityPoint:
    tokens = sum(s.tokens for s in scores)
    tail_tokens = sum(s.tail_tokens for s in scores)
    nll = sum(s.nll_sum for s in scores) / tokens if tokens else math.nan
    tail = sum(s.tail_nll_sum for s in scores) / tail_tokens if tail_tokens else math.nan
    return PerplexityPoint(
        method=method,
        length=length,
        windows=len(scores),
        tokens=tokens,
        nll=nll,
        ppl=_exp(nll),
        tail_tokens=tail_tokens,
        tail_nll=tail,
        tail_ppl=_exp(tail),
    )


def _exp(x: float) -> float:
    if not math.isfinite(x):
        return math.nan
    return math.exp(x) if x < 700 else math.inf


def perplexity_at_length(
    score: Callable[[list[int]], Sequence[float]],
    windows: Iterable[list[int]],
    *,
    method: str,
    length: int,
    tail_fraction: float = 0.25,
    progress: Callable[[int], None] | None = None,
) -> PerplexityPoint:
    """Score each window with ``score(window) -> next-token logprobs`` and average into one point.

    ``score`` is where the model lives: :func:`model_scorer` for a local transformers model, or an
    endpoint client (see :mod:`ropepatch.evaluation.endpoints`).
    """
    results = []
    for window in windows:
        results.append(score_window(score(window), tail_fraction))
        if progress is not None:
            progress(1)
    return _combine(method, length, results)


def model_scorer(model: Any, device: Any = None) -> Callable[[list[int]], list[float]]:
    """A ``score`` function for :func:`perplexity_at_length` backed by a local transformers model."""
    import torch

    if device is None:
        device = _model_device(model)

    def score(window: list[int]) -> list[float]:
        ids = torch.tensor([window], dtype=torch.long, device=device)
        return token_logprobs(model, ids)[0].tolist()

    return score


def _model_device(model: Any) -> Any:
    import torch

    device = getattr(model, "device", None)
    if device is not None:
        return device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
