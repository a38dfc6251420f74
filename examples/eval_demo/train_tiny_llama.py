"""Train a 0.8M-parameter Llama on byte-level Python source at a 128-token context (CPU, minutes).

The demo ships the model this script trained (``examples/eval_demo/model``; examples/eval_demo/DATA.md), so
``run_demo.py`` only evaluates; run this to retrain it or to try other settings (the defaults are the
shipped model's; ``--steps 900 --batch 32`` trains longer, to a lower loss).

The model is transformers' own Llama architecture with plain RoPE, so ``ropepatch eval`` can then
apply every scaling method to it through the transformers adapter and measure how each holds up
past the training length. Run from the repository root::

    python examples/eval_demo/train_tiny_llama.py --out examples/eval_demo/model

Everything is seeded; on the same Python version (same stdlib files) and torch build the run is
repeatable up to floating-point reduction order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository, when ropepatch is not installed

from stdlib_corpus import read_bytes, split_files  # noqa: E402


def build_config(context: int):
    """The demo model: hidden 128, 4 layers, 4 heads of 32, tied embeddings, 256 byte tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=context,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("eval-demo-out") / "model")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    from ropepatch.evaluation.byte_tokens import save_byte_level_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_files, held_files = split_files()
    data = np.frombuffer(read_bytes(train_files), dtype=np.uint8)
    print(f"train: {len(train_files)} files, {len(data) / 1e6:.1f}M bytes; held out: {len(held_files)} files")

    config = build_config(args.context)
    model = LlamaForCausalLM(config)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, context {args.context}")

    decay = [t for n, t in model.named_parameters() if t.dim() >= 2]
    no_decay = [t for n, t in model.named_parameters() if t.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    start = time.time()
    log = []
    for step in range(args.steps):
        starts = rng.integers(0, len(data) - args.context - 1, size=args.batch)
        batch = torch.from_numpy(np.stack([data[s : s + args.context + 1] for s in starts]).astype(np.int64))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.time() - start
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(elapsed, 1)})
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}  {elapsed:.0f}s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    save_byte_level_tokenizer(args.out)
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "parameters": n_params,
                "context": args.context,
                "steps": args.steps,
                "batch": args.batch,
                "lr": args.lr,
                "seed": args.seed,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "train_files": len(train_files),
                "train_bytes": int(len(data)),
                "seconds": round(time.time() - start, 1),
                "log": log,
            },
            indent=2,
        )
    )
    print(f"saved to {args.out} in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
