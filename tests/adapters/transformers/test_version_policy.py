"""The version policy on the real transformers: floor, tested-up-to, capability probes and the self-check.

A probe is broken on purpose the way a future release would break it (a patch point renamed, on
transformers' own module), and the self-check is fed a rotary module whose frequencies are off (a
release computing them differently): the runtime is left exactly as it was, one warning names the
probe and the version, and ``strict=True`` raises instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from tf_tiny import make_config, make_model, rotary_of

import ropepatch
from ropepatch.adapters.base import ProbeFailed

PNTK_31 = 0.009406557595590406  # tests/data/reference/test-vectors.json "ntk_by_parts_3way_s4", element 31


def _airophin() -> Any:
    return make_config("llama", head_dim=128, max_position_embeddings=16384, original_max_position_embeddings=4096)


def _identity() -> dict[str, Any]:
    import transformers.configuration_utils as cu
    import transformers.modeling_rope_utils as ru
    import transformers.modeling_utils as mu

    return {
        "__init__": mu.PreTrainedModel.__dict__["__init__"],
        "post_init": mu.PreTrainedModel.__dict__["post_init"],
        "to_dict": cu.PreTrainedConfig.__dict__["to_dict"],
        "rope types": dict(ru.ROPE_INIT_FUNCTIONS),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] is b[k] for k in a if k != "rope types") and a["rope types"] == b["rope types"]


def _ropepatch_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ropepatch.RopepatchWarning)]


def test_a_renamed_patch_point_leaves_transformers_untouched_and_warns_once(monkeypatch) -> None:
    import transformers
    import transformers.dynamic_module_utils as dmu

    make_model(_airophin())  # transformers' modelling modules import the point by name: load them first
    monkeypatch.setattr(dmu, "get_class_in_module_renamed", dmu.get_class_in_module, raising=False)
    monkeypatch.delattr(dmu, "get_class_in_module")  # what a release renaming it looks like
    before = _identity()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ropepatch.enable()
        make_model(_airophin())  # nothing patched: a model is built by transformers alone
    assert _same(before, _identity())
    messages = _ropepatch_warnings(caught)
    assert len(messages) == 1, messages
    assert "transformers.dynamic_module_utils:get_class_in_module" in messages[0]
    assert f"transformers {transformers.__version__}" in messages[0]
    assert "transformers" in ropepatch.runtime.status()["failures"]
    assert ropepatch.report()["adapters"]["transformers"]["state"] == "failed"


def test_a_renamed_patch_point_raises_under_strict(monkeypatch) -> None:
    import transformers.dynamic_module_utils as dmu

    monkeypatch.delattr(dmu, "get_class_in_module")
    before = _identity()
    with pytest.raises(ProbeFailed, match="get_class_in_module"):
        ropepatch.enable(strict=True)
    assert _same(before, _identity())


def test_a_changed_signature_fails_its_probe(monkeypatch) -> None:
    import transformers.modeling_utils as mu

    original = mu.PreTrainedModel.__dict__["__init__"]

    def init_without_config(self, *args, **kwargs):  # a release that renamed the parameter
        return original(self, *args, **kwargs)

    init_without_config.__signature__ = __import__("inspect").Signature()  # type: ignore[attr-defined]
    monkeypatch.setattr(mu.PreTrainedModel, "__init__", init_without_config)
    with pytest.raises(ProbeFailed, match=r"PreTrainedModel.__init__ takes no config"):
        ropepatch.enable(strict=True)
    assert mu.PreTrainedModel.__dict__["__init__"] is init_without_config


def _off_by_one_percent(monkeypatch) -> None:
    """Transformers' Llama rotary module with an attention factor 1% off (a release changing the math).

    (Its ``inv_freq`` would be recomputed from the registered init function in transformers 5's
    ``post_init``; the attention factor is kept as ``__init__`` set it.)
    """
    from transformers.models.llama import modeling_llama

    cls = modeling_llama.LlamaRotaryEmbedding
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.attention_scaling = self.attention_scaling * 1.01

    monkeypatch.setattr(cls, "__init__", __init__)


def test_a_self_check_mismatch_restores_transformers_and_warns_once(monkeypatch) -> None:
    import transformers

    before = _identity()
    ropepatch.enable()
    assert "transformers" in ropepatch.runtime.status()["installed"]
    _off_by_one_percent(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_model(_airophin())
        later = rotary_of(make_model(_airophin()))  # built by transformers alone now
    messages = _ropepatch_warnings(caught)
    assert len(messages) == 1, messages
    assert "self-check" in messages[0] and f"transformers {transformers.__version__}" in messages[0]
    assert _same(before, _identity())
    assert later.rope_type == "default"  # the next model: transformers' own plain RoPE


def test_a_self_check_mismatch_raises_under_strict(monkeypatch) -> None:
    ropepatch.enable(strict=True)
    _off_by_one_percent(monkeypatch)
    with pytest.raises(ProbeFailed, match="self-check"):
        make_model(_airophin())


def test_the_self_check_passes_on_the_installed_transformers() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ropepatch.enable(strict=True)
        rotary = rotary_of(make_model(_airophin()))
    assert rotary.inv_freq[31].item() == pytest.approx(PNTK_31, rel=1e-6)
    assert _ropepatch_warnings(caught) == []
    assert ("transformers", "self-check") in ropepatch.runtime.current().checked


def test_a_release_newer_than_tested_patches_with_one_info_line(monkeypatch, caplog) -> None:
    from ropepatch.registry import get_registry

    adapter = get_registry().adapters["transformers"]
    monkeypatch.setattr(adapter, "tested_up_to", "4.40")  # the installed 5.x is "newer than tested"
    with caplog.at_level("INFO", logger="ropepatch"):
        ropepatch.enable()
    assert "transformers" in ropepatch.runtime.status()["installed"]
    notes = [r.getMessage() for r in caplog.records if "newer than 4.40" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("ropepatch: transformers:")
    assert rotary_of(make_model(_airophin())).inv_freq[31].item() == pytest.approx(PNTK_31, rel=1e-6)
