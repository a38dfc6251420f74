"""A checkpoint cannot steer ropepatch with ropepatch's own internal record, and nested rope settings round-trip.

ropepatch keeps, under a rewritten rope dict's ``"ropepatch"`` key, the dict as loaded. That key
is also something any config.json can carry: a file that plants it in a nested (per layer type)
sub-dict used to replace the whole ``rope_parameters`` on read (a YaRN x4 full-attention entry was
read as linear x64) and on ``save_pretrained`` (flattening the per-layer settings). Records are
now trusted only when ropepatch made them in this process (``ropepatch.markers``).
Real transformers, a tiny Gemma 3 (per-layer-type ``rope_parameters``), no weights downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import hardening_kit as kit
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ropepatch  # noqa: E402
from ropepatch import detect  # noqa: E402

REAL = {
    "full_attention": {
        "rope_type": "yarn",
        "factor": 4.0,
        "rope_theta": 1000000.0,
        "original_max_position_embeddings": 256,
    },
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
}
# what the planted record claims: linear x64 over the whole dict
PLANTED = {
    "original": {"rope_type": "linear", "factor": 64.0, "rope_theta": 10000.0},
    "spec": {"method": "linear", "factor": 64.0, "rotary_dim": 16},
}


def _config(rope):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        rope_parameters=copy.deepcopy(rope),
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
    )


def _checkpoint(folder: Path, rope) -> Path:
    """A tiny Gemma 3 saved without ropepatch, its config.json's rope dict then set to ``rope`` verbatim."""
    from transformers import Gemma3ForCausalLM

    ropepatch.disable()
    torch.manual_seed(0)
    Gemma3ForCausalLM(_config(REAL)).save_pretrained(folder)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data["rope_parameters"] = copy.deepcopy(rope)
    path.write_text(json.dumps(data, indent=2))
    return folder


def _rotary_buffers(model) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{b}": t.clone()
        for name, module in model.named_modules()
        if "rotary" in type(module).__name__.lower()
        for b, t in module.named_buffers(recurse=False)
    }


def _hostile() -> dict:
    rope = copy.deepcopy(REAL)
    rope["full_attention"]["ropepatch"] = copy.deepcopy(PLANTED)
    return rope


def test_a_planted_record_in_a_nested_sub_dict_does_not_steer_detection(tmp_path):
    folder = _checkpoint(tmp_path / "hostile", _hostile())
    for source in (folder, json.loads((folder / "config.json").read_text())):
        spec = detect(source, use_env=False, emit_warnings=False)
        assert (spec.method, spec.factor, spec.effective_original) == ("yarn", 4.0, 256), spec.summary()
        kit.record("marker-planted-detect", "spec")
    # the record at the top of a flat dict, and a ropepatch rope type with its "spec" planted too
    flat = {**REAL["full_attention"], "ropepatch": copy.deepcopy(PLANTED)}
    spec = detect({"model_type": "llama", "head_dim": 16, "rope_parameters": flat}, use_env=False, emit_warnings=False)
    assert (spec.method, spec.factor) == ("yarn", 4.0)
    kit.record("marker-planted-detect", "spec")


def test_a_planted_record_does_not_steer_the_model_build_or_the_save(tmp_path):
    from transformers import Gemma3ForCausalLM

    folder = _checkpoint(tmp_path / "hostile", _hostile())
    # the reference: transformers alone, the same settings without the planted key
    clean = _checkpoint(tmp_path / "clean", REAL)
    reference = _rotary_buffers(Gemma3ForCausalLM.from_pretrained(clean))
    assert reference
    with ropepatch.enabled():
        model = Gemma3ForCausalLM.from_pretrained(folder)
        got = _rotary_buffers(model)
        assert got.keys() == reference.keys()
        for name in got:
            assert torch.equal(got[name], reference[name]), name  # YaRN x4 as the file says, not linear x64
        out = tmp_path / "saved"
        model.save_pretrained(out)
    loaded = json.loads((folder / "config.json").read_text())["rope_parameters"]
    saved = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert saved == loaded  # exactly what was loaded: per-layer, nothing flattened
    kit.record("marker-planted-save", "spec")


@pytest.mark.parametrize("overrides", [{}, {"method": "ntk", "alpha": 4.0}, {"factor": 8.0}])
def test_nested_per_layer_settings_round_trip_through_save_pretrained(tmp_path, overrides):
    from transformers import Gemma3ForCausalLM

    folder = _checkpoint(tmp_path / "nested", REAL)
    with ropepatch.enabled(**overrides):
        model = Gemma3ForCausalLM.from_pretrained(folder)
        if "method" in overrides:  # ropepatch did rewrite the dict it serves from, to a type of its own
            assert model.config.rope_parameters["full_attention"]["rope_type"] == "ropepatch_ntk"
        model.save_pretrained(tmp_path / "saved")
        again = Gemma3ForCausalLM.from_pretrained(tmp_path / "saved").config.to_dict()["rope_parameters"]
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["rope_parameters"]
    assert saved == REAL and again == REAL
    kit.record("marker-nested-round-trip", "spec")
