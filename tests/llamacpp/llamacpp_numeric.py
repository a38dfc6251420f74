"""Real llama.cpp (llama-cpp-python) against transformers + ropepatch on the same tiny weights.

Each case names a spec, how the GGUF states it (llama.cpp's own keys, a rope_freqs tensor, or
nothing, leaving it to ropepatch's llama-cpp-python adapter) and how the transformers model gets it
(its config's rope_scaling or ropepatch overrides). Both runtimes run the same token ids over
``SEQ`` positions, four times the original context, and the logits are compared position by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llamacpp_models import HEAD_DIM, hf_config, random_weights, write_gguf

ORIGINAL = 64
FACTOR = 4.0
SEQ = 256
THETA = 10000.0


@dataclass(frozen=True)
class Case:
    name: str
    #: ropepatch.enable() overrides (for both runtimes; {}: enabled, nothing overridden); None: ropepatch off
    overrides: Mapping[str, Any] | None
    #: the transformers config's rope_scaling (None: plain)
    hf_rope: Mapping[str, Any] | None
    #: GGUF keys beyond the plain ones
    gguf_keys: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    #: add llama.cpp's rope_freqs tensor for this llama3 spec
    rope_freqs: Mapping[str, Any] | None = None
    #: True: the comparison must show the runtimes disagree (a demonstration of the bug)
    expect_wrong: bool = False


YARN = {"rope_type": "yarn", "factor": FACTOR, "original_max_position_embeddings": ORIGINAL}
YARN_KEYS = {
    "llama.rope.scaling.type": ("string", "yarn"),
    "llama.rope.scaling.factor": ("float32", FACTOR),
    "llama.rope.scaling.original_context_length": ("uint32", ORIGINAL),
}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": ORIGINAL,
}

CASES = (
    Case(
        "linear (GGUF keys)",
        {},
        {"rope_type": "linear", "factor": FACTOR},
        {"llama.rope.scaling.type": ("string", "linear"), "llama.rope.scaling.factor": ("float32", FACTOR)},
    ),
    Case(
        "linear (ropepatch on a plain GGUF)",
        {"method": "linear", "factor": FACTOR},
        {"rope_type": "linear", "factor": FACTOR},
    ),
    Case("ntk via theta (ropepatch)", {"method": "ntk", "alpha": FACTOR}, None),
    Case("yarn (GGUF keys)", {}, YARN, YARN_KEYS),
    Case("yarn, GGUF without its keys, no ropepatch", None, YARN, expect_wrong=True),
    Case(
        "yarn, GGUF without its keys (ropepatch)",
        {"method": "yarn", "factor": FACTOR, "original_max_position_embeddings": ORIGINAL},
        YARN,
    ),
    Case(
        "yarn attention_factor=1 (ropepatch, kv-override)",
        {"method": "yarn", "factor": FACTOR, "original_max_position_embeddings": ORIGINAL, "attention_factor": 1.0},
        {**YARN, "attention_factor": 1.0},
    ),
    Case(
        "yarn beta_fast=16 beta_slow=2 (ropepatch)",
        {
            "method": "yarn",
            "factor": FACTOR,
            "original_max_position_embeddings": ORIGINAL,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
        },
        {**YARN, "beta_fast": 16.0, "beta_slow": 2.0},
    ),
    Case(
        "ntk-by-parts (ropepatch)",
        {"method": "ntk-by-parts", "factor": FACTOR, "original_max_position_embeddings": ORIGINAL},
        None,
    ),
    Case("ntk-yarn (ropepatch)", {"method": "ntk-yarn", "factor": FACTOR}, None),
    Case("llama3 (rope_freqs tensor)", {}, LLAMA3, rope_freqs=LLAMA3),
)


def llama3_rope_freqs(rope: Mapping[str, Any]) -> np.ndarray:
    """llama.cpp's rope_freqs for a llama3 spec: plain inv_freq / scaled inv_freq, from transformers' own code."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = hf_config(rope, max_position_embeddings=SEQ, rope_theta=THETA)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM))
    return (plain / scaled.double().numpy()).astype(np.float32)


def transformers_logits(weights: Mapping[str, np.ndarray], case: Case, tokens: list[int]) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM

    cfg = hf_config(case.hf_rope, max_position_embeddings=SEQ, rope_theta=THETA)
    model = LlamaForCausalLM(cfg).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0]
    return out.double().numpy()


def llamacpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=SEQ,
        n_batch=SEQ,
        n_ubatch=SEQ,
        logits_all=True,
        verbose=False,
        n_threads=2,
        seed=0,
        type_k=llama_cpp.GGML_TYPE_F32,  # the KV cache defaults to f16: 1e-2 of rounding on logits of 10
        type_v=llama_cpp.GGML_TYPE_F32,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def run_case(case: Case, folder: Path, seed: int = 0) -> dict[str, float]:
    """Max |logit difference| (positions past the original context, and all) for one case."""
    import ropepatch

    weights = random_weights(seed)
    extra = {"rope_freqs.weight": llama3_rope_freqs(case.rope_freqs)} if case.rope_freqs else None
    path = write_gguf(
        folder / f"case-{abs(hash(case.name))}.gguf",
        weights,
        context_length=ORIGINAL,
        rope_theta=THETA,
        keys=case.gguf_keys,
        extra_tensors=extra,
    )
    tokens = [int(t) for t in np.random.default_rng(seed + 1).integers(3, 64, SEQ)]
    ropepatch.disable()
    try:
        if case.overrides is not None:
            ropepatch.enable(**case.overrides)
        hf = transformers_logits(weights, case, tokens)
        ll = llamacpp_logits(path, tokens)
    finally:
        ropepatch.disable()
    diff = np.abs(hf - ll)
    return {"past_original": float(diff[ORIGINAL:].max()), "all": float(diff.max()), "scale": float(np.abs(hf).max())}
