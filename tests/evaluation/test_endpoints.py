"""``ropepatch eval --endpoint``: the TGI and OpenAI (vLLM) paths give the model's own numbers.

The servers here are loopback stand-ins that answer in each server's documented schema with
log-probabilities computed by a real tiny transformers model (see ``model_servers``); TGI itself
cannot run on CPU. A real vLLM server is exercised by compat/ (see the final report).
"""

from __future__ import annotations

import json

import pytest
from eval_tiny import make_tiny_llama
from model_servers import TGIHandler, VLLMHandler, serve

from ropepatch.cli.main import main
from ropepatch.evaluation.byte_tokens import ByteCodec
from ropepatch.evaluation.endpoints import EndpointError, openai_scorer, tgi_scorer
from ropepatch.evaluation.perplexity import cut_windows, model_scorer, perplexity_at_length


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama()


def local_points(model, ids, lengths):
    score = model_scorer(model)
    return {n: perplexity_at_length(score, cut_windows(ids, n, max_windows=2), method="x", length=n) for n in lengths}


def test_openai_cli_matches_the_local_model(model, text_file, tmp_path):
    ids = list(text_file.read_bytes())
    with serve(VLLMHandler, model) as (url, requests):
        rc = main(
            [
                "eval",
                "--endpoint",
                url,
                "--api",
                "openai",
                "--served-model",
                "tiny",
                "--byte-level",
                "--text",
                str(text_file),
                "--lengths",
                "32,64",
                "--windows",
                "2",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--no-plots",
                "--label",
                "vllm",
            ]
        )
    assert rc == 0
    assert requests[0]["path"] == "/v1/completions"
    assert requests[0]["body"]["prompt"] == ids[:32] and requests[0]["body"]["prompt_logprobs"] == 0
    points = json.loads((tmp_path / "results.json").read_text())["perplexity"]
    ref = local_points(model, ids, (32, 64))
    assert [p["method"] for p in points] == ["vllm", "vllm"]
    # a server does not report its RoPE: the rows say where they come from instead of claiming a spec
    assert {p["applied"] for p in points} == {f"as served by {url} (its RoPE is not reported by the API)"}
    for p in points:
        assert p["nll"] == pytest.approx(ref[p["length"]].nll, rel=1e-5)
        assert p["tail_nll"] == pytest.approx(ref[p["length"]].tail_nll, rel=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client calls pydantic's .dict()
@pytest.mark.parametrize("use_client", [False, True], ids=["http", "text-generation-client"])
def test_tgi_matches_the_local_model(model, text_file, use_client):
    if use_client:
        pytest.importorskip(
            "text_generation",
            reason="the text-generation client is not installed (pip install --no-deps text-generation aiohttp)",
        )
    ids = list(text_file.read_bytes())
    codec = ByteCodec()
    with serve(TGIHandler, model) as (url, requests):
        score = tgi_scorer(url, codec.decode, use_client=use_client)
        got = perplexity_at_length(score, cut_windows(ids, 64, max_windows=2), method="tgi", length=64)
    assert requests[0]["path"] == ("/" if use_client else "/generate")
    assert requests[0]["body"]["inputs"] == bytes(ids[:64]).decode()
    assert requests[0]["body"]["parameters"]["decoder_input_details"] is True
    assert got.nll == pytest.approx(local_points(model, ids, (64,))[64].nll, rel=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tgi_cli(model, text_file, tmp_path):
    with serve(TGIHandler, model) as (url, _):
        rc = main(
            [
                "eval",
                "--endpoint",
                url,
                "--api",
                "tgi",
                "--byte-level",
                "--text",
                str(text_file),
                "--lengths",
                "48",
                "--windows",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--no-plots",
            ]
        )
    assert rc == 0
    (point,) = json.loads((tmp_path / "results.json").read_text())["perplexity"]
    assert point["method"] == "endpoint" and point["tokens"] == 47


def test_schema_errors_are_clear(model):
    with serve(VLLMHandler, model) as (url, _):
        with pytest.raises(EndpointError, match="HTTP 404.*does not exist"):
            openai_scorer(url, "other-model")([1, 2, 3])
    with serve(TGIHandler, model) as (url, _):
        with pytest.raises(EndpointError, match="HTTP 404"):
            openai_scorer(url, "tiny")([1, 2, 3])  # a TGI server has no /v1/completions here
    with pytest.raises(EndpointError, match="cannot reach"):
        tgi_scorer("http://127.0.0.1:9", ByteCodec().decode, use_client=False)([65, 66])
