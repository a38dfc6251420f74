"""What ropepatch costs inside transformers, on CPU, in one run (not a timed test).

    PYTHONPATH=. python benchmarks/transformers_overhead.py

Prints, side by side: forward time of a model with transformers' native ``yarn`` against the same
model with ropepatch computing YaRN as its own type (the target is a ratio <= 1.02); the cost of
``enable()`` (transformers already imported, and the first model build that installs the lazy
patch points); and the per-token cost of a dynamic method during generation against a static one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

torch.set_num_threads(1)

CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=1024,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
L0 = 1024


def _model(**rope: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG, **rope)).eval()


def _time(fn: Any, repeat: int) -> float:
    """Median seconds per call (after a warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def forward_ratio() -> tuple[float, float]:
    import ropepatch

    yarn = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}}
    native = _model(**yarn)
    # the same weights through a ropepatch type: a YaRN variant transformers lacks computes the same here
    # (ntk-by-parts = YaRN without temperature; attention factor set to YaRN's so numbers match)
    ropepatch.enable(method="ntk-by-parts", factor=4.0, original_max_position_embeddings=L0)
    ours = _model()
    rot = next(m for m in ours.modules() if "Rotary" in type(m).__name__)
    assert rot.rope_type.startswith("ropepatch_")
    # stay enabled: models built with ropepatch types need its registry entries (disable() removes them)
    ids = torch.randint(0, 1024, (1, 512))
    a, b = [], []
    with torch.no_grad():
        for _ in range(5):  # interleaved, so drift hits both alike
            a.append(_time(lambda: native(ids), 3))
            b.append(_time(lambda: ours(ids), 3))
    ropepatch.disable()
    return statistics.median(a), statistics.median(b)


def enable_cost() -> tuple[float, float]:
    import ropepatch

    ropepatch.disable()
    start = time.perf_counter()
    ropepatch.enable()
    enable_s = time.perf_counter() - start
    # first model build after enable(): plans the config (detection + agreement check) once
    start = time.perf_counter()
    _model(original_max_position_embeddings=L0)
    first_build = time.perf_counter() - start
    ropepatch.disable()
    start = time.perf_counter()
    _model(original_max_position_embeddings=L0)
    plain_build = time.perf_counter() - start
    return enable_s, first_build - plain_build


def per_token(method: dict[str, Any], prompt: int, new: int) -> float:
    import ropepatch

    ropepatch.enable(**method)
    model = _model()
    ids = torch.randint(0, 1024, (1, prompt))

    def run() -> None:
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    short = _time(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False), 3)
    cost = (_time(run, 3) - short) / (new - 1)
    ropepatch.disable()
    return cost


def main() -> None:
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, 1 CPU thread")
    native, ours = forward_ratio()
    print(
        f"forward, 512 tokens:  transformers yarn {native * 1e3:8.2f} ms | ropepatch type {ours * 1e3:8.2f} ms | ratio {ours / native:.3f} (target <= 1.02)"
    )
    enable_s, first = enable_cost()
    print(
        f"enable() with transformers imported: {enable_s * 1e3:.2f} ms; first model build after it: +{first * 1e3:.1f} ms"
    )
    # a prompt past L0 so every decode step is in the dynamic regime (the length grows each token)
    static = per_token({"method": "ntk-by-parts", "factor": 4.0, "original_max_position_embeddings": L0}, L0 + 8, 17)
    dynamic = per_token({"method": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": L0}, L0 + 8, 17)
    unclamped = per_token({"method": "dynamic-ntk-unclamped", "original_max_position_embeddings": L0}, L0 + 8, 17)
    print(
        f"generate, per token:  static {static * 1e3:.2f} ms | dynamic-yarn {dynamic * 1e3:.2f} ms "
        f"(+{(dynamic - static) * 1e3:.2f} ms) | dynamic-ntk-unclamped {unclamped * 1e3:.2f} ms (+{(unclamped - static) * 1e3:.2f} ms)"
    )


if __name__ == "__main__":
    main()
