"""enable()/disable()/patch_model() against the real transformers: identities, idempotence, threads,
import order, the version gate, and models built before enable()."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
from conftest import run_fresh
from tf_tiny import L0, make_config, make_model, rotary_of

torch = pytest.importorskip("torch")

# part-NTK 3-way, d=128, b=1e4, s=4, L0=4096 (tests/data/reference/test-vectors.json "ntk_by_parts_3way_s4")
PNTK_31 = 0.009406557595590406
PLAIN_31 = 0.011547819846894583  # "default", d=128


def _airophin_config() -> Any:
    """bhenrym14/airophin's convention: top-level original 4096, max 16384, no rope_scaling; head_dim 128."""
    return make_config("llama", head_dim=128, max_position_embeddings=16384, original_max_position_embeddings=4096)


def _patch_points() -> dict[str, Any]:
    import transformers.configuration_utils as cu
    import transformers.dynamic_module_utils as dmu
    import transformers.modeling_gguf_pytorch_utils as gg
    import transformers.modeling_rope_utils as ru
    import transformers.modeling_utils as mu
    from transformers.models.phi3 import configuration_phi3 as phi3

    return {
        "PreTrainedModel.__init__": mu.PreTrainedModel.__dict__["__init__"],
        "PreTrainedModel.post_init": mu.PreTrainedModel.__dict__["post_init"],
        "PreTrainedConfig.to_dict": cu.PreTrainedConfig.__dict__["to_dict"],
        "PreTrainedConfig.from_dict": cu.PreTrainedConfig.__dict__["from_dict"],
        "standardize_rope_params": ru.RotaryEmbeddingConfigMixin.__dict__["standardize_rope_params"],
        "get_class_in_module": dmu.get_class_in_module,
        "load_gguf_checkpoint": gg.load_gguf_checkpoint,
        "Phi3Config.__class_validators__": phi3.Phi3Config.__dict__["__class_validators__"],
        "ROPE_INIT_FUNCTIONS": dict(ru.ROPE_INIT_FUNCTIONS),
        "mixin validators": sorted(k for k in vars(ru.RotaryEmbeddingConfigMixin) if k.startswith("_validate_")),
    }


def test_disable_restores_every_patched_attribute_exactly() -> None:
    import ropepatch

    before = _patch_points()
    ropepatch.enable()
    during = _patch_points()
    # build one ropepatch-typed Phi-3 so that the lazily patched points are patched too
    make_model(
        make_config(
            "phi3", rope_parameters={"rope_type": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": L0}
        )
    )
    during_build = _patch_points()
    ropepatch.disable()
    after = _patch_points()
    changed = [k for k in before if during[k] is not before[k] and during[k] != before[k]]
    assert {
        "PreTrainedModel.__init__",
        "PreTrainedConfig.to_dict",
        "ROPE_INIT_FUNCTIONS",
        "get_class_in_module",
    } <= set(changed)
    assert during_build["Phi3Config.__class_validators__"] is not before["Phi3Config.__class_validators__"]
    for key, value in before.items():
        if isinstance(value, (dict, list)):
            assert after[key] == value, key
        else:
            assert after[key] is value, key  # the original object, not a copy


def test_enable_is_idempotent() -> None:
    import transformers.modeling_rope_utils as ru
    import transformers.modeling_utils as mu

    import ropepatch

    ropepatch.enable()
    init = mu.PreTrainedModel.__dict__["__init__"]
    keys = dict(ru.ROPE_INIT_FUNCTIONS)
    ropepatch.enable()
    assert mu.PreTrainedModel.__dict__["__init__"] is init
    assert dict(ru.ROPE_INIT_FUNCTIONS) == keys
    assert init.__wrapped__ is not init and not getattr(init.__wrapped__, "__ropepatch__", False)  # wrapped once


def test_airophin_with_and_without_ropepatch() -> None:
    """Top-level original_max_position_embeddings, no rope_scaling: part-NTK under ropepatch, plain without."""
    import ropepatch

    plain = rotary_of(make_model(_airophin_config()))
    assert plain.inv_freq[31].item() == pytest.approx(PLAIN_31, rel=1e-6)  # transformers ignores it
    ropepatch.enable()  # transformers was imported long before: the patch still applies
    patched = rotary_of(make_model(_airophin_config()))
    assert patched.rope_type == "ropepatch_part_ntk"
    assert patched.inv_freq[31].item() == pytest.approx(PNTK_31, rel=1e-6)
    assert patched.inv_freq[-1].item() == pytest.approx(2.8869549617236455e-5, rel=1e-6)


def test_patch_model_fixes_a_model_built_before_enable() -> None:
    import ropepatch

    model = make_model(_airophin_config())
    ids = torch.randint(0, 128, (1, 24))
    with torch.no_grad():
        before = model(ids).logits
    assert ropepatch.patch_model(model) is model
    rot = rotary_of(model)
    assert rot.rope_type == "ropepatch_part_ntk"
    assert rot.inv_freq[31].item() == pytest.approx(PNTK_31, rel=1e-6)
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-5)
    # overrides: a dynamic method on the same model follows the length
    ropepatch.patch_model(model, method="dynamic-yarn", factor=4.0, original_max_position_embeddings=4096)
    spec = ropepatch.detect(
        _airophin_config(), method="dynamic-yarn", factor=4.0, original_max_position_embeddings=4096
    )
    cos, _ = rot(torch.zeros(1), torch.arange(8192)[None])
    inv, att = spec.frequencies(8192)
    assert att == pytest.approx(1.0693147180559945)  # test-vectors.json dynamic_yarn_L8192
    assert rot.inv_freq[31].item() == pytest.approx(0.00910501180235919, rel=1e-6)
    assert cos[0, 1, 0].item() == pytest.approx(torch.cos(inv[0]).item() * att, rel=1e-6)


def test_patch_model_refuses_other_objects() -> None:
    import ropepatch

    with pytest.raises(TypeError, match="no adapter"):
        ropepatch.patch_model(torch.nn.Linear(2, 2))


def test_models_built_concurrently_in_threads() -> None:
    import ropepatch

    ropepatch.enable()
    results: list[Any] = []
    errors: list[BaseException] = []

    def build(i: int) -> None:
        try:
            results.append(rotary_of(make_model(_airophin_config(), seed=i)).inv_freq[31].item())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [pytest.approx(PNTK_31, rel=1e-6)] * 6


def test_enable_before_import_in_a_fresh_interpreter() -> None:
    """enable() first, transformers later: the post-import hooks patch it."""
    code = """
import json, sys, ropepatch
ropepatch.enable()
assert "transformers" not in sys.modules
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64, head_dim=128, max_position_embeddings=16384,
                  original_max_position_embeddings=4096)
rot = LlamaForCausalLM(cfg).model.rotary_emb
print(json.dumps([rot.rope_type, rot.inv_freq[31].item()]))
"""
    rope_type, value = run_fresh(code)
    assert rope_type == "ropepatch_part_ntk"
    assert value == pytest.approx(PNTK_31, rel=1e-6)


def test_version_outside_the_tested_range_warns_and_does_not_patch(monkeypatch: Any) -> None:
    import transformers.modeling_utils as mu

    import ropepatch
    from ropepatch.registry import get_registry

    adapter = get_registry().adapters["transformers"]
    monkeypatch.setattr(adapter, "floor", "99")  # the installed version is older than the floor
    init = mu.PreTrainedModel.__dict__["__init__"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ropepatch.enable()
    messages = [str(w.message) for w in caught]
    assert any("not patching transformers" in m and "older than 99" in m for m in messages), messages
    assert mu.PreTrainedModel.__dict__["__init__"] is init
    assert "transformers" not in ropepatch.runtime.status()["installed"]


def test_floor_and_tested_up_to_are_declared() -> None:
    from packaging.version import Version

    from ropepatch.registry import get_registry

    adapter = get_registry().adapters["transformers"]
    assert (adapter.floor, adapter.tested_up_to) == ("4.36", "5.25")
    assert adapter.problem() is None  # the installed 5.x is above the floor
    # no upper bound: a release newer than tested is patched, with a note
    assert adapter.problem(Version("9.0")) is None and "newer than 5.25" in adapter.untested(Version("9.0"))
