"""ExLlamaV2/V3: an override of a checkpoint's own scaling wins, through every route.

A checkpoint that says yarn x4 (linear x2, llama3 x8, plain at base 10000) loaded with an override
of the same method and another factor (or another base) must run the override, whether it comes
from ``enable(**kwargs)``, ``$ROPEPATCH``, a ``per_model`` mapping or ``patch_model(model, **kw)``.
Real wheels on CPU (see exllama_harness); the reference is transformers' ``ROPE_INIT_FUNCTIONS`` for
a config naming the overridden values, or the plain formula ``base^(-2i/d)`` for a base override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from exllama_harness import write_model
from exllama_reference import TABLE_ATOL, hf_frequencies, ntk_inv_freq, table
from test_exllamav2 import build_tables, main_table, max_error
from test_exllamav3 import build_rope, rel_error

import ropepatch

YARN = {"original_max_position_embeddings": 4096}
LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

#: name -> (checkpoint config, override, reference () -> (float32 inv_freq, attention factor))
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], Any]] = {
    "yarn x4 -> x8": (
        {"max_position_embeddings": 16384, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, **YARN}},
        {"method": "yarn", "factor": 8.0},
        lambda: hf_frequencies("yarn", {"factor": 8.0, **YARN}, head_dim=128, max_pos=16384, theta=1e4),
    ),
    "linear x2 -> factor 4": (
        {"rope_scaling": {"type": "linear", "factor": 2.0}},
        {"factor": 4.0},
        lambda: hf_frequencies("linear", {"factor": 4.0}, head_dim=128, max_pos=4096, theta=1e4),
    ),
    "llama3 x8 -> x16": (
        {
            "rope_theta": 5e5,
            "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, **LLAMA3},
        },
        {"method": "llama3", "factor": 16.0},
        lambda: hf_frequencies("llama3", {"factor": 16.0, **LLAMA3}, head_dim=128, max_pos=131072, theta=5e5),
    ),
    "plain, another base": ({}, {"rope_theta": 5e5}, lambda: (ntk_inv_freq(5e5, 1.0, 128), 1.0)),
}
ROUTES = ("kwargs", "ROPEPATCH", "per_model", "patch_model")
ROWS = 4096


def _env_text(override: dict[str, Any]) -> str:
    rest = ",".join(f"{k}={v:g}" for k, v in override.items() if k != "method")
    return f"{override['method']}:{rest}" if "method" in override else rest


def _enable(route: str, override: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    if route == "kwargs":
        ropepatch.enable(**override)
    elif route == "ROPEPATCH":
        monkeypatch.setenv("ROPEPATCH", _env_text(override))
        ropepatch.enable()
    elif route == "per_model":
        ropepatch.enable(per_model={"*tiny-scaled*": override, "*another-model*": {"factor": 32.0}})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
def test_exllamav2_override_wins(
    exllamav2: Any, case: str, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, override, reference = CASES[case]
    model_dir = write_model(tmp_path / "acme__tiny-scaled", config)
    inv, attention = reference()
    ref_sin, ref_cos = table(inv, attention, ROWS)
    _, native_sin, _ = build_tables(exllamav2, model_dir, ROWS)
    assert max_error(native_sin, ref_sin) > 0.05, "the override must change the table"

    if route == "patch_model":
        model, _, _ = build_tables(exllamav2, model_dir, ROWS)  # loaded before enable(): native tables
        assert ropepatch.patch_model(model, **override) is model
        ctx = (model.device_context if hasattr(model, "device_context") else model.device_tensors)[0]
        sin, cos = main_table(ctx)
    else:
        _enable(route, override, monkeypatch)
        _, sin, cos = build_tables(exllamav2, model_dir, ROWS)
    assert max_error(sin, ref_sin) <= TABLE_ATOL
    assert max_error(cos, ref_cos) <= TABLE_ATOL


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
def test_exllamav3_override_wins(
    exllamav3: Any, case: str, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, override, reference = CASES[case]
    model_dir = write_model(tmp_path / "acme__tiny-scaled", config)
    inv, attention = reference()
    native = build_rope(exllamav3, model_dir)
    assert rel_error(native.inv_freq, inv) > 1e-3 or native.attn_factor != pytest.approx(attention)

    if route == "patch_model":
        from exllamav3.util.rope import RoPE

        cfg = exllamav3.Config.from_directory(str(model_dir))
        model = exllamav3.Model.from_config(cfg)
        rope = RoPE("cpu", cfg.rope_settings)  # loaded before enable(): ExLlamaV3's own RoPE
        holder = next(m for m in model.modules if hasattr(m, "modules"))
        holder.rope = rope
        assert ropepatch.patch_model(model, **override) is model
    else:
        _enable(route, override, monkeypatch)
        rope = build_rope(exllamav3, model_dir)
    assert rel_error(rope.inv_freq, inv) <= 1e-6
    assert rope.attn_factor == pytest.approx(attention, rel=1e-12)
    sin, cos = rope.compute_sincos(torch.tensor([0, 1, 2047]))  # ExLlamaV3's own torch path
    assert float(cos[0, 0]) == pytest.approx(attention, rel=1e-6)


def test_a_mapping_for_another_model_leaves_exllama_alone(exllamav2: Any, tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "acme__tiny-plain", {})
    _, native_sin, native_cos = build_tables(exllamav2, model_dir, ROWS)
    ropepatch.enable(per_model={"*another-model*": {"rope_theta": 5e5}})
    _, sin, cos = build_tables(exllamav2, model_dir, ROWS)
    assert torch.equal(sin, native_sin) and torch.equal(cos, native_cos)
