"""Perplexity from a running server's prompt log-probabilities: TGI and OpenAI-compatible (vLLM).

This measures what a deployment really computes: the server applies whatever RoPE scaling it was
started with, and the loss by context length shows whether that scaling holds past the original
context. Nothing here imports torch.

* ``openai``: ``POST {url}/v1/completions`` with the window's token ids as the prompt,
  ``max_tokens: 1`` and ``prompt_logprobs: 0`` (vLLM's extension); the answer's
  ``choices[0].prompt_logprobs`` holds, per prompt token, a ``{token_id: {"logprob": ...}}`` map
  (``None`` for the first token).
* ``tgi``: ``POST {url}/generate`` with the window's text, ``max_new_tokens: 1`` and
  ``decoder_input_details: true``; the answer's ``details.prefill`` lists the prompt tokens as TGI
  tokenised them, each with its ``logprob`` (``None`` for the first). Through the
  ``text-generation`` client when it is installed, else the same request over plain HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EndpointError", "openai_scorer", "tgi_scorer"]


class EndpointError(RuntimeError):
    """The server answered with an error or with something that is not the documented schema."""


def _post(url: str, payload: dict[str, Any], timeout: float, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:500]
        hint = ""
        if "Out of range float values" in body:
            # vLLM cannot serialise NaN/inf: seen when positions run past the server's cos/sin cache
            hint = (
                " (the server computed NaN or infinite log-probabilities: is the prompt longer than its max_model_len?)"
            )
        elif "max_tokens must be at least 1" in body:
            # the completions API generates at least one token after the prompt
            hint = " (the window must be at least one token shorter than the server's max_model_len)"
        raise EndpointError(f"{url} answered HTTP {exc.code}: {body}{hint}") from None
    except urllib.error.URLError as exc:
        raise EndpointError(f"cannot reach {url}: {exc.reason}") from None


def openai_scorer(
    url: str, model: str, *, timeout: float = 600.0, api_key: str | None = None
) -> Callable[[list[int]], list[float]]:
    """``score(window_ids) -> next-token logprobs`` from an OpenAI-compatible server with
    ``prompt_logprobs`` (vLLM). ``model`` is the served model name."""
    endpoint = url.rstrip("/") + ("/completions" if url.rstrip("/").endswith("/v1") else "/v1/completions")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None

    def score(window: list[int]) -> list[float]:
        payload = {
            "model": model,
            "prompt": [int(t) for t in window],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        answer = _post(endpoint, payload, timeout, headers)
        try:
            entries = answer["choices"][0]["prompt_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{endpoint} returned no choices[0].prompt_logprobs; is it a vLLM OpenAI-compatible server? "
                f"(answer keys: {sorted(answer) if isinstance(answer, dict) else type(answer).__name__})"
            ) from None
        return _openai_logprobs(entries, window, endpoint)

    return score


def _openai_logprobs(entries: Any, window: Sequence[int], where: str) -> list[float]:
    if not isinstance(entries, list) or len(entries) != len(window):
        n = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise EndpointError(f"{where}: prompt_logprobs has {n} entries for a {len(window)}-token prompt")
    out = []
    for position in range(1, len(window)):
        entry = entries[position]
        token = str(int(window[position]))
        if not isinstance(entry, dict) or token not in entry:
            raise EndpointError(f"{where}: prompt_logprobs[{position}] lacks the prompt token {token}")
        value = entry[token]
        out.append(float(value["logprob"] if isinstance(value, dict) else value))
    return out


def tgi_scorer(
    url: str, decode: Callable[[list[int]], str], *, timeout: float = 600.0, use_client: bool | None = None
) -> Callable[[list[int]], list[float]]:
    """``score(window_ids) -> next-token logprobs`` from a TGI server's decoder input details.

    TGI takes text, so the window is decoded with ``decode`` and TGI tokenises it again; the
    logprobs returned are for TGI's own tokens (usually the same count, give or take a BOS).
    ``use_client``: ``True`` requires the ``text-generation`` client, ``False`` uses plain HTTP,
    ``None`` uses the client when it is installed.
    """
    client = None
    if use_client is not False:
        try:
            from text_generation import Client
        except ImportError:
            if use_client:
                raise
        else:
            client = Client(url.rstrip("/"), timeout=int(timeout))
    endpoint = url.rstrip("/") + "/generate"

    def score(window: list[int]) -> list[float]:
        text = decode(window)
        if client is not None:
            try:
                response = client.generate(text, max_new_tokens=1, decoder_input_details=True)
            except Exception as exc:  # the client raises its own error classes for HTTP errors
                raise EndpointError(f"{endpoint}: {type(exc).__name__}: {exc}") from None
            prefill = [{"id": t.id, "logprob": t.logprob} for t in response.details.prefill]
        else:
            payload = {
                "inputs": text,
                "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True},
            }
            answer = _post(endpoint, payload, timeout)
            if isinstance(answer, list):  # TGI answers a list when the request was batched
                answer = answer[0] if answer else {}
            try:
                prefill = answer["details"]["prefill"]
            except (KeyError, TypeError):
                raise EndpointError(f"{endpoint} returned no details.prefill; is it a TGI server?") from None
        values = [p.get("logprob") for p in prefill]
        if len(values) < 2:
            raise EndpointError(f"{endpoint}: details.prefill has {len(values)} tokens; decoder_input_details ignored?")
        if any(v is None for v in values[1:]):
            raise EndpointError(f"{endpoint}: details.prefill has tokens without a logprob past the first")
        return [float(v) for v in values[1:] if v is not None]

    return score
