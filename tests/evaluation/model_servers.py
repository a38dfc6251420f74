"""Local HTTP servers that answer with TGI's and vLLM's documented response schemas, computed by a
real (tiny) transformers model, so the endpoint clients are tested on real numbers end to end.

TGI's own server needs a GPU (its flash kernels do not run on CPU), so the TGI path is tested
against this stand-in, which answers ``POST /generate`` (and ``POST /`` with ``"stream": false``,
the route the text-generation client uses) as TGI documents it (``details`` with ``prefill`` when
``decoder_input_details`` is set). The vLLM stand-in answers ``POST /v1/completions``
in vLLM's OpenAI-compatible schema (``choices[].prompt_logprobs``). Both tokenise with byte ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


def _logprobs(model: Any, ids: list[int]) -> tuple[list[float], list[int], int]:
    """Log-probability of each prompt token after the first, its rank, and the greedy next token."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(ids[1:])
    chosen = lp[:-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)
    ranks = (lp[:-1] > chosen.unsqueeze(-1)).sum(-1) + 1
    return chosen.tolist(), ranks.tolist(), int(lp[-1].argmax())


class _Handler(BaseHTTPRequestHandler):
    model: Any = None
    served_name = "tiny"
    lock = threading.Lock()
    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        with type(self).lock:
            code, answer = self.answer(self.path, body)
        self._reply(code, answer)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        raise NotImplementedError


class TGIHandler(_Handler):
    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        # TGI routes POST / (what the text-generation client calls, with "stream": false) and /generate
        if path not in ("/", "/generate") or body.get("stream"):
            return 404, {"error": "not found", "error_type": "not_found"}
        ids = list(body["inputs"].encode("utf-8"))
        params = body.get("parameters") or {}
        lps, _, nxt = _logprobs(self.model, ids)
        prefill = []
        if params.get("decoder_input_details"):
            prefill = [{"id": ids[0], "text": chr(ids[0]), "logprob": None}] + [
                {"id": t, "text": chr(t), "logprob": lp} for t, lp in zip(ids[1:], lps, strict=True)
            ]
        details = {
            "finish_reason": "length",
            "generated_tokens": 1,
            "seed": None,
            "prefill": prefill,
            "tokens": [{"id": nxt, "text": chr(nxt), "logprob": -1.0, "special": False}],
            "top_tokens": None,
            "best_of_sequences": None,
        }
        answer = {"generated_text": chr(nxt), "details": details}
        return 200, [answer] if path == "/" else answer  # the compat route answers a one-item list


class VLLMHandler(_Handler):
    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path != "/v1/completions":
            return 404, {"detail": "Not Found"}
        if body.get("model") != self.served_name:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
        ids = [int(t) for t in body["prompt"]]
        lps, ranks, nxt = _logprobs(self.model, ids)
        prompt_logprobs = None
        if body.get("prompt_logprobs") is not None:
            prompt_logprobs = [None] + [
                {str(t): {"logprob": lp, "rank": r, "decoded_token": chr(t)}}
                for t, lp, r in zip(ids[1:], lps, ranks, strict=True)
            ]
        choice = {
            "index": 0,
            "text": chr(nxt),
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "prompt_logprobs": prompt_logprobs,
        }
        usage = {"prompt_tokens": len(ids), "total_tokens": len(ids) + 1, "completion_tokens": 1}
        return 200, {
            "id": "cmpl-test",
            "object": "text_completion",
            "created": 0,
            "model": self.served_name,
            "choices": [choice],
            "usage": usage,
        }


@contextmanager
def serve(handler: type[_Handler], model: Any) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve ``model`` with ``handler`` on a free loopback port; yields (base URL, request log)."""
    cls = type(handler.__name__, (handler,), {"model": model, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), cls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cls.requests
    finally:
        server.shutdown()
        server.server_close()
