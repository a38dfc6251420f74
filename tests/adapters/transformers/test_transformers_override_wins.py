"""Explicit overrides win over a checkpoint's own scaling of the same method.

A checkpoint that already says yarn x4 (linear x2, llama3 x8), loaded with an override of the same
method and another factor, must run the override: through ``enable(**kwargs)``, ``$ROPEPATCH``, a
``per_model`` mapping and ``patch_model(model, **overrides)``. The reference is transformers itself:
``ROPE_INIT_FUNCTIONS`` on a config that says the overridden values, and a model loaded from that
config without ropepatch (same weights), whose logits the patched model must reproduce.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from tf_tiny import L0, make_config, make_model, rotary_of

torch = pytest.importorskip("torch")

#: name -> (the checkpoint's rope dict, the override, the rope dict transformers computes the override from)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "yarn x4 -> x8": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
        {"method": "yarn", "factor": 8.0},
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L0},
    ),
    "linear x2 -> factor 4 (method kept)": (
        {"rope_type": "linear", "factor": 2.0},
        {"factor": 4.0},
        {"rope_type": "linear", "factor": 4.0},
    ),
    "llama3 x8 -> x16": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": L0,
        },
        {"method": "llama3", "factor": 16.0},
        {
            "rope_type": "llama3",
            "factor": 16.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": L0,
        },
    ),
    "yarn: another beta_fast": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
        {"beta_fast": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0, "beta_fast": 2.0},
    ),
    "yarn: another theta": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
        {"rope_theta": 500000.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0, "rope_theta": 500000.0},
    ),
}
ROUTES = ("kwargs", "ROPEPATCH", "per_model", "patch_model")


def _env_text(override: dict[str, Any]) -> str:
    """``override`` in ROPEPATCH syntax (``yarn:factor=8``, ``factor=4``)."""
    rest = ",".join(f"{k}={v:g}" for k, v in override.items() if k != "method")
    return f"{override['method']}:{rest}" if "method" in override else rest


def _checkpoint(folder: Path, rope: dict[str, Any]) -> Path:
    """A tiny Llama saved with seeded weights, its config naming ``rope`` (saved without ropepatch)."""
    import ropepatch

    ropepatch.disable()
    config = make_config("llama", rope_parameters={"rope_theta": 10000.0, **rope})
    make_model(config).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["rope_parameters"]["factor"] == rope["factor"]
    return folder


def _load(folder: Path, config: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs = {"config": config} if config is not None else {}
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()


def _reference(folder: Path, rope: dict[str, Any]) -> tuple[Any, Any, float]:
    """transformers alone, on a config naming the overridden values: (model, inv_freq, attention factor)."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    import ropepatch

    assert not ropepatch.is_enabled()
    config = AutoConfig.from_pretrained(folder)
    config.rope_parameters = {"rope_theta": 10000.0, **copy.deepcopy(rope)}
    inv, attention = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
    return _load(folder, config), inv, float(attention)


def _logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
def test_override_of_the_checkpoints_own_scaling(
    case: str, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    rope, override, expected = CASES[case]
    folder = _checkpoint(tmp_path / "acme__tiny-scaled-4k", rope)
    ids = torch.randint(0, 128, (1, 3 * L0), generator=torch.Generator().manual_seed(3))
    reference, inv, attention = _reference(folder, expected)
    as_saved = _logits(_load(folder), ids)
    want = _logits(reference, ids)
    assert not torch.allclose(as_saved, want, atol=1e-4), "the override must change something"

    if route == "kwargs":
        ropepatch.enable(**override)
        model = _load(folder)
    elif route == "ROPEPATCH":
        monkeypatch.setenv("ROPEPATCH", _env_text(override))
        ropepatch.enable()
        model = _load(folder)
    elif route == "per_model":
        ropepatch.enable(per_model={"*tiny-scaled*": override, "*other-model*": {"factor": 2.0}})
        model = _load(folder)
    else:
        model = _load(folder)
        assert ropepatch.patch_model(model, **override) is model

    rot = rotary_of(model)
    assert torch.allclose(rot.inv_freq, inv, rtol=1e-6, atol=0), (rot.inv_freq, inv)
    assert rot.attention_scaling == pytest.approx(attention, rel=1e-9)
    assert torch.allclose(_logits(model, ids), want, rtol=0, atol=1e-5)
    # what ropepatch reports is what runs
    spec = ropepatch.detect(folder, emit_warnings=False, **override)
    assert spec.effective_factor == expected["factor"]


def test_a_mapping_for_another_model_leaves_the_checkpoint_alone(tmp_path: Path) -> None:
    import ropepatch

    rope, _, _ = CASES["yarn x4 -> x8"]
    folder = _checkpoint(tmp_path / "acme__tiny-scaled-4k", rope)
    ids = torch.randint(0, 128, (1, 2 * L0), generator=torch.Generator().manual_seed(4))
    want = _logits(_load(folder), ids)
    ropepatch.enable(per_model={"*other-model*": {"factor": 8.0}})
    model = _load(folder)
    assert rotary_of(model).rope_type == "yarn"
    assert torch.equal(_logits(model, ids), want)


def test_an_override_equal_to_the_checkpoint_keeps_transformers_own(tmp_path: Path) -> None:
    import ropepatch

    rope, _, _ = CASES["yarn x4 -> x8"]
    folder = _checkpoint(tmp_path / "acme__tiny-scaled-4k", rope)
    ropepatch.enable(method="yarn", factor=4.0)
    model = _load(folder)
    assert model.config.rope_parameters["factor"] == 4.0
    assert rotary_of(model).rope_type == "yarn"


def test_from_config_and_a_second_model_from_the_same_config() -> None:
    """The config object is rewritten once; a second model from it (and a copy of it) gets the same tables."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    import ropepatch

    rope, override, expected = CASES["yarn x4 -> x8"]
    reference = make_config("llama", rope_parameters={"rope_theta": 10000.0, **expected})
    inv, attention = ROPE_INIT_FUNCTIONS["yarn"](reference, "cpu")
    config = make_config("llama", rope_parameters={"rope_theta": 10000.0, **rope})
    ropepatch.enable(**override)
    for model in (make_model(config), make_model(config), make_model(copy.deepcopy(config))):
        rot = rotary_of(model)
        assert torch.allclose(rot.inv_freq, inv, rtol=1e-6, atol=0)
        assert rot.attention_scaling == pytest.approx(float(attention))


def test_gguf_checkpoint_with_an_override(tmp_path: Path) -> None:
    """The GGUF path: YaRN x16 from the header, x8 from the override."""
    pytest.importorskip("accelerate", reason="from_pretrained(gguf_file=...) needs accelerate")
    from test_corrections import _write_gguf
    from transformers import AutoModelForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    import ropepatch

    _write_gguf(tmp_path / "tiny.gguf", yarn=True)
    ropepatch.enable(method="yarn", factor=8.0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    rot = rotary_of(model)
    reference = make_config(
        "llama",
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": L0 // 4,
        },
    )
    inv, attention = ROPE_INIT_FUNCTIONS["yarn"](reference, "cpu")
    assert torch.allclose(rot.inv_freq, inv, rtol=1e-6, atol=0)
    assert rot.attention_scaling == pytest.approx(float(attention))
    assert attention == pytest.approx(0.1 * torch.log(torch.tensor(8.0)).item() + 1)
