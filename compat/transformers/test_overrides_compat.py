"""Overrides of a checkpoint's own scaling win, on whichever transformers version is installed.

4.36-4.47 build per-model classes (``LlamaLinearScalingRotaryEmbedding``: the factor lives in the
class's cache code), later versions registry modules; both must run the override. References: the
same transformers version on a config that names the overridden values (without ropepatch), and for
YaRN, which old versions lack or compute differently, tests/data/reference/test-vectors.json
(``yarn_s4``, d=128).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

L0 = 64
VECTORS = Path(__file__).resolve().parents[2] / "tests" / "data" / "reference" / "test-vectors.json"
ROUTES = ("kwargs", "ROPEPATCH", "per_model", "patch_model")

#: name -> (the checkpoint's rope_scaling, the override, rope_scaling transformers computes the override from)
NATIVE_CASES = {
    "linear x2 -> factor 4": ({"type": "linear", "factor": 2.0}, {"factor": 4.0}, {"type": "linear", "factor": 4.0}),
    "dynamic x2 -> x4": (
        {"type": "dynamic", "factor": 2.0},
        {"method": "dynamic", "factor": 4.0},
        {"type": "dynamic", "factor": 4.0},
    ),
}


def _config_dict(rope_scaling: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    data = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=L0,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_scaling=rope_scaling,
    )
    data.update(extra)
    return data


def _checkpoint(folder: Path, data: dict[str, Any]) -> Path:
    """Seeded weights of a plain tiny Llama, saved with ``data`` as config.json (written as is)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import ropepatch

    ropepatch.disable()
    plain = {k: v for k, v in data.items() if k not in ("rope_scaling", "model_type", "architectures")}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**plain)).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()


def _load_with(route: str, folder: Path, override: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    import ropepatch

    if route == "kwargs":
        ropepatch.enable(**override)
    elif route == "ROPEPATCH":
        rest = ",".join(f"{k}={v:g}" for k, v in override.items() if k != "method")
        monkeypatch.setenv("ROPEPATCH", f"{override['method']}:{rest}" if "method" in override else rest)
        ropepatch.enable()
    elif route == "per_model":
        ropepatch.enable(per_model={"*tiny-scaled*": override})
    else:
        ropepatch.enable()  # the checkpoint loads through ropepatch; the call's override goes on top
        model = _load(folder)
        assert ropepatch.patch_model(model, **override) is model
        return model
    return _load(folder)


def _rotary(model: Any) -> Any:
    return next(m for m in model.modules() if "RotaryEmbedding" in type(m).__name__)


def _cos_sin(rot: Any, length: int, dim: int) -> tuple[Any, Any]:
    """cos/sin for positions 0..length-1 as (length, dim), through the version's signature."""
    params = inspect.signature(type(rot).forward).parameters
    x = torch.zeros(1, 4, length, dim)
    if "position_ids" in params:
        cos, sin = rot(x, torch.arange(length)[None])
    else:
        cos, sin = rot(x, seq_len=length)
    return cos.reshape(length, -1), sin.reshape(length, -1)


def _logits(model: Any, n: int) -> Any:
    ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(NATIVE_CASES))
def test_override_of_the_checkpoints_own_scaling(
    case: str, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROPEPATCH", raising=False)
    rope, override, expected = NATIVE_CASES[case]
    folder = _checkpoint(tmp_path / "acme__tiny-scaled", _config_dict(rope))
    # this version's own reading of the overridden values (same weights)
    reference = _load(_checkpoint(tmp_path / "reference", _config_dict(expected)))
    n = 3 * L0  # past the original context: dynamic NTK scales there
    want = _logits(reference, n)
    assert not torch.allclose(_logits(_load(folder), n), want, atol=1e-4), "the override must change something"

    model = _load_with(route, folder, override, monkeypatch)
    got = _logits(model, n)
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()
    if not expected["type"] == "dynamic":  # a dynamic module's cache depends on what it saw before
        cos, sin = _cos_sin(_rotary(model), n, 16)
        ref_cos, ref_sin = _cos_sin(_rotary(reference), n, 16)
        assert torch.allclose(cos, ref_cos, rtol=0, atol=5e-6) and torch.allclose(sin, ref_sin, rtol=0, atol=5e-6)


@pytest.mark.parametrize("route", ROUTES)
def test_yarn_override_follows_the_published_vector(
    route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A yarn x2 checkpoint, factor=4 from the override: test-vectors.json ``yarn_s4`` (d=128, original 4096)."""
    monkeypatch.delenv("ROPEPATCH", raising=False)
    case = next(c for c in json.loads(VECTORS.read_text())["cases"] if c["id"] == "yarn_s4")
    expected = case["expected"]
    rope = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}
    data = _config_dict(
        rope, hidden_size=256, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192
    )
    folder = _checkpoint(tmp_path / "acme__tiny-scaled", data)
    model = _load_with(route, folder, {"method": "yarn", "factor": 4.0}, monkeypatch)
    rot = _rotary(model)
    cos, sin = _cos_sin(rot, 128, 128)
    attention = float(expected["attention_factor"])
    for index, key in ((1, "inv_freq[1]"), (31, "inv_freq[31]"), (63, "inv_freq[-1]")):
        inv = float(expected[key])
        assert rot.inv_freq[index].item() == pytest.approx(inv, rel=1e-6), key
        assert cos[0, index].item() == pytest.approx(attention, rel=1e-6)  # cos(0) times the temperature
        for p in (1, 100):
            assert math.isclose(cos[p, index].item(), math.cos(p * inv) * attention, abs_tol=1e-5), (key, p)
            assert math.isclose(sin[p, index].item(), math.sin(p * inv) * attention, abs_tol=1e-5), (key, p)
