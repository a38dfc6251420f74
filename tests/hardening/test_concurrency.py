"""enable / disable / patch_model from many threads, and model builds racing enable().

Every interleaving must end consistent: each model has either the plain table or the checkpoint's
real one (never a mix or garbage), and disable() after it all restores the original objects.
"""

from __future__ import annotations

import random
import sys
import threading
import traceback

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ropepatch  # noqa: E402
from ropepatch import RopeSpec  # noqa: E402

THREADS = 8


def _config():
    from transformers import LlamaConfig

    # airophin-style: top-level original, no rope_scaling -> part-ntk under ropepatch, plain without
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    cfg.original_max_position_embeddings = 64
    return cfg


PLAIN = RopeSpec("default", rotary_dim=32).frequencies()[0]
PNTK = RopeSpec("part-ntk", rotary_dim=32, factor=4.0, original_max_position_embeddings=64).frequencies()[0]


def _snapshot():
    mods = {
        name: sys.modules[name]
        for name in (
            "transformers.modeling_utils",
            "transformers.configuration_utils",
            "transformers.modeling_rope_utils",
            "transformers.dynamic_module_utils",
        )
    }
    mu, cu, ru, dmu = mods.values()
    return {
        "init": mu.PreTrainedModel.__dict__["__init__"],
        "post_init": mu.PreTrainedModel.__dict__["post_init"],
        "to_dict": cu.PretrainedConfig.__dict__["to_dict"],
        "get_class_in_module": dmu.get_class_in_module,
        "registry": dict(ru.ROPE_INIT_FUNCTIONS),
        "mixin": dict(vars(ru.RotaryEmbeddingConfigMixin)),
    }


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            assert all(a[key][k] is b[key][k] for k in a[key]), key
        else:
            assert a[key] is b[key], key


def _table(model):
    inv = model.model.rotary_emb.inv_freq
    if torch.allclose(inv, PLAIN, rtol=2e-6, atol=0):
        return "plain"
    if torch.allclose(inv, PNTK, rtol=2e-6, atol=0):
        return "part-ntk"
    return "garbage"


def test_enable_disable_patch_model_from_many_threads():
    import transformers.dynamic_module_utils  # noqa: F401 - every patch point imported up front
    from transformers import LlamaForCausalLM

    ropepatch.disable()
    before = _snapshot()
    models = [LlamaForCausalLM(_config()) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    errors: list[str] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        try:
            barrier.wait()
            for _ in range(25):
                op = rng.choice(("enable", "disable", "patch"))
                if op == "enable":
                    ropepatch.enable()
                elif op == "disable":
                    ropepatch.disable()
                else:
                    ropepatch.patch_model(models[i])
                    assert _table(models[i]) == "part-ntk"
        except BaseException:  # noqa: BLE001 - reported below
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    ropepatch.disable()
    _same(_snapshot(), before)
    assert all(_table(m) == "part-ntk" for m in models)


def test_model_builds_racing_enable_are_all_consistent():
    from transformers import LlamaForCausalLM

    ropepatch.disable()
    before = _snapshot()
    results: list[str] = []
    errors: list[str] = []
    enabled = threading.Event()
    start = threading.Barrier(THREADS + 1)

    def builder() -> None:
        try:
            start.wait()
            for _ in range(6):
                was_enabled = enabled.is_set()
                table = _table(LlamaForCausalLM(_config()))
                results.append(table)
                if was_enabled:  # built entirely after enable() returned: must be patched
                    assert table == "part-ntk"
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=builder) for _ in range(THREADS)]
    for t in threads:
        t.start()
    start.wait()
    ropepatch.enable()
    enabled.set()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert "garbage" not in results and "part-ntk" in results
    ropepatch.disable()
    _same(_snapshot(), before)
