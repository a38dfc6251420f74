"""Real model builds racing enable()/disable() from 8 threads for 20 s: no exception, nothing left behind.

Each thread picks at random: build a tiny Llama (an airophin-style config: part-NTK under
ropepatch, plain without), ``patch_model`` on one, ``enable()`` with or without overrides, or
``disable()``. A build that starts while ropepatch is enabled must finish with a consistent
table even if ``disable()``/``enable()`` run meanwhile (a registry entry such as
``ROPE_INIT_FUNCTIONS['ropepatch_part_ntk']`` must not vanish under it), and after the final
``disable()`` ``sys.meta_path`` and every object ropepatch patches are exactly as before the first
``enable()``. ``ROPEPATCH_RACE_SECONDS`` changes the duration (20 s is the requirement).
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
import traceback

import hardening_kit as kit
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ropepatch  # noqa: E402
from ropepatch import RopeSpec  # noqa: E402

THREADS = 8
SECONDS = float(os.environ.get("ROPEPATCH_RACE_SECONDS", "20"))


def _config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    cfg.original_max_position_embeddings = 64
    return cfg


# the tables a model may end with: plain (built while disabled), part-NTK (enable()), and the
# override tables; anything else is a torn build
TABLES = {
    "plain": RopeSpec("default", rotary_dim=16).frequencies()[0],
    "part-ntk": RopeSpec("part-ntk", rotary_dim=16, factor=4.0, original_max_position_embeddings=64).frequencies()[0],
    "linear x4": RopeSpec("linear", rotary_dim=16, factor=4.0, original_max_position_embeddings=64).frequencies()[0],
    "ntk alpha 2": RopeSpec("ntk", rotary_dim=16, params={"alpha": 2.0}).frequencies()[0],
}
OVERRIDES = [{}, {"method": "linear", "factor": 4.0}, {"method": "ntk", "alpha": 2.0}]


def _table(model) -> str:
    inv = model.model.rotary_emb.inv_freq
    for name, ref in TABLES.items():
        if torch.allclose(inv, ref, rtol=2e-6, atol=0):
            return name
    return "torn"


def _snapshot() -> dict:
    import transformers.configuration_utils as cu
    import transformers.modeling_rope_utils as ru
    import transformers.modeling_utils as mu

    return {
        "meta_path": list(sys.meta_path),
        "init": mu.PreTrainedModel.__dict__["__init__"],
        "post_init": mu.PreTrainedModel.__dict__["post_init"],
        "to_dict": cu.PretrainedConfig.__dict__["to_dict"],
        "from_dict": cu.PretrainedConfig.__dict__["from_dict"],
        "registry": dict(ru.ROPE_INIT_FUNCTIONS),
        "mixin": dict(vars(ru.RotaryEmbeddingConfigMixin)),
    }


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), (key, set(a[key]) ^ set(b[key]))
            assert all(a[key][k] is b[key][k] for k in a[key]), key
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key]) and all(x is y for x, y in zip(a[key], b[key], strict=True)), (
                key,
                a[key],
                b[key],
            )
        else:
            assert a[key] is b[key], key


@pytest.mark.slow
def test_model_builds_patch_model_enable_and_disable_race_for_20_seconds():
    from transformers import LlamaForCausalLM

    ropepatch.disable()
    gc.collect()
    before = _snapshot()
    errors: list[str] = []
    counts: dict[str, int] = {}
    count_lock = threading.Lock()
    stop = time.monotonic() + SECONDS
    barrier = threading.Barrier(THREADS)

    def count(what: str) -> None:
        with count_lock:
            counts[what] = counts.get(what, 0) + 1

    def worker(i: int) -> None:
        rng = random.Random(i)
        mine = LlamaForCausalLM(_config())
        barrier.wait()
        while time.monotonic() < stop:
            op = rng.choice(("build", "build", "patch", "enable", "enable", "disable"))
            try:
                if op == "build":
                    count("build " + _table(LlamaForCausalLM(_config())))
                elif op == "patch":
                    overrides = rng.choice(OVERRIDES)
                    ropepatch.patch_model(mine, **overrides)
                    table = _table(mine)
                    expected = {"": "part-ntk", "linear": "linear x4", "ntk": "ntk alpha 2"}[
                        overrides.get("method", "")
                    ]
                    # another thread's enable() may change the settings between the patch and this read
                    count("patch " + ("ok" if table in TABLES else "torn"))
                    if table == "torn":
                        raise AssertionError(f"patch_model({overrides}) left a torn table (wanted {expected})")
                elif op == "enable":
                    ropepatch.enable(quiet=True, **rng.choice(OVERRIDES))
                    count("enable")
                else:
                    ropepatch.disable()
                    count("disable")
            except BaseException:  # noqa: BLE001 - every exception is a failure, reported below
                errors.append(f"{op}: {traceback.format_exc()}")
                count("exception")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 120)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    ropepatch.disable()
    gc.collect()  # models built under ropepatch are gone: nothing may keep their registry entries
    ropepatch.disable()
    torn = sum(n for k, n in counts.items() if k.endswith("torn"))
    builds = sum(n for k, n in counts.items() if k.startswith("build"))
    for _ in range(builds - torn):
        kit.record("race-build-enable-disable", "spec")
    for _ in range(len(errors) + torn):
        kit.record("race-build-enable-disable", "other")
    print(f"\nrace counts over {SECONDS:g} s: {dict(sorted(counts.items()))}")
    assert not errors, errors[:3]
    assert torn == 0, counts
    assert builds > 0 and counts.get("enable", 0) > 0 and counts.get("disable", 0) > 0, counts
    _same(_snapshot(), before)
