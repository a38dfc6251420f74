"""ExLlamaV2: the tables a loaded model rotates with equal the reference, for every method and version.

Real ExLlamaV2 wheels (see exllama_harness.V2_VERSIONS) run on CPU; the only stand-in is the compiled
CUDA extension module, which table building never calls. No GPU machine is lent to this task, so the
kernels that read these tables do not run here. References: transformers' ROPE_INIT_FUNCTIONS where
it has the method, tests/data/reference/test-vectors.json and the published formulas otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from exllama_harness import write_model
from exllama_reference import (
    TABLE_ATOL,
    checkpoint,
    columns,
    expected_at,
    hf_frequencies,
    ntk_inv_freq,
    row,
    table,
    vector,
)
from packaging.version import Version

import ropepatch


def _version(exllamav2: Any) -> Version:
    return Version(exllamav2.__version__ if hasattr(exllamav2, "__version__") else exllamav2.version.__version__)


def build_tables(
    exllamav2: Any, model_dir: Path, max_seq_len: int, **knobs: Any
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Parse the model's config with ExLlamaV2 and let a device context build its sin/cos tables.

    The model object is the real ``ExLlamaV2`` (lazy, no weights); the device context is created
    without its constructor, which would open a CUDA stream, and prepares its tables on the CPU.
    """
    import importlib

    cfg = exllamav2.ExLlamaV2Config()
    cfg.model_dir = str(model_dir)
    cfg.prepare(no_tensors=True)
    cfg.max_seq_len = max_seq_len
    for key, value in knobs.items():
        setattr(cfg, key, value)
    model = exllamav2.ExLlamaV2(cfg, lazy_load=True)
    try:
        owner = importlib.import_module("exllamav2.device").ExLlamaV2DeviceContext
        contexts = model.device_context
    except ImportError:  # 0.1.8 and earlier
        owner = importlib.import_module("exllamav2.model").ExLlamaV2DeviceTensors
        model.device_tensors = contexts = []
    ctx = object.__new__(owner)
    ctx.model, ctx.device_idx, ctx.archparams = model, -1, getattr(cfg.arch, "lm", cfg.arch)
    ctx.prepare_sincos()
    contexts.append(ctx)
    return model, *main_table(ctx)


def main_table(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    sin, cos = (ctx.sin[0], ctx.cos[0]) if isinstance(ctx.sin, list) else (ctx.sin, ctx.cos)
    return sin.reshape(sin.shape[-2], sin.shape[-1]), cos.reshape(cos.shape[-2], cos.shape[-1])


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max())


# -- the method catalogue ---------------------------------------------------------------------
Reference = Callable[[], tuple[torch.Tensor, float]]
RowsReference = Callable[[], dict[int, tuple[Any, float]]]


@dataclass
class Case:
    id: str
    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    rows: int = 8192
    full: Reference | None = None  # one frequency vector for the whole table
    by_row: RowsReference | None = None  # position -> (float32 frequencies or test-vector columns, factor)


def _hf(rope_type: str, params: dict[str, Any], **kw: Any) -> Reference:
    return lambda: hf_frequencies(rope_type, params, **kw)


def _vector_rows(spec: dict[int, str], dim: int) -> RowsReference:
    def build() -> dict[int, tuple[Any, float]]:
        out = {}
        for position, case_id in spec.items():
            expected = vector(case_id)
            out[position] = (columns(expected, dim), float(expected.get("attention_factor", 1.0)))
        return out

    return build


def _hf_dynamic_rows(positions: list[int]) -> RowsReference:
    # transformers' dynamic NTK at the length each position is decoded at (p + 1)
    return lambda: {
        p: hf_frequencies("dynamic", {"factor": 4.0}, head_dim=128, max_pos=4096, theta=1e4, seq_len=p + 1)
        for p in positions
    }


CASES = [
    Case(
        "linear",
        {"rope_scaling": {"type": "linear", "factor": 4.0}},
        full=_hf("linear", {"factor": 4.0}, head_dim=128, max_pos=4096, theta=1e4),
    ),
    Case(
        "llama3",
        {
            "rope_theta": 5e5,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
        full=_hf(
            "llama3",
            {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            head_dim=128,
            max_pos=131072,
            theta=5e5,
        ),
    ),
    Case(
        "yarn",
        {
            "max_position_embeddings": 16384,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        },
        full=_hf(
            "yarn", {"factor": 4.0, "original_max_position_embeddings": 4096}, head_dim=128, max_pos=16384, theta=1e4
        ),
    ),
    Case(
        "yarn-beta-attention-factor",
        {
            "max_position_embeddings": 16384,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4096,
                "beta_fast": 16.0,
                "attention_factor": 1.25,
            },
        },
        full=_hf(
            "yarn",
            {"factor": 4.0, "original_max_position_embeddings": 4096, "beta_fast": 16.0, "attention_factor": 1.25},
            head_dim=128,
            max_pos=16384,
            theta=1e4,
        ),
    ),
    Case("longrope", {}, full=None),  # filled in below from the Phi-3.5-mini corpus entry
    Case(
        "dynamic",
        {"rope_scaling": {"type": "dynamic", "factor": 4.0}},
        by_row=_hf_dynamic_rows([0, 100, 4095, 4096, 4097, 6000, 8191]),
    ),
    Case(
        "ntk",
        {},
        overrides={"method": "ntk", "alpha": 2.0},
        full=lambda: (ntk_inv_freq(1e4, 2.0, 128), 1.0),
        by_row=_vector_rows({8191: "ntk_alpha2"}, 128),
    ),
    Case(
        "part-ntk",
        {"max_position_embeddings": 16384, "original_max_position_embeddings": 4096},  # airophin, see below
        by_row=_vector_rows(
            {1: "ntk_by_parts_3way_s4", 4095: "ntk_by_parts_3way_s4", 8191: "ntk_by_parts_3way_s4"}, 128
        ),
    ),
    Case(
        "ntk-by-parts",
        {"max_position_embeddings": 16384},
        overrides={"method": "ntk-by-parts", "factor": 4.0, "original_max_position_embeddings": 4096},
        # YaRN's frequencies without its temperature (YaRN paper section 3.2)
        full=lambda: (
            hf_frequencies(
                "yarn",
                {"factor": 4.0, "original_max_position_embeddings": 4096},
                head_dim=128,
                max_pos=16384,
                theta=1e4,
            )[0],
            1.0,
        ),
    ),
    Case(
        "ntk-margin",
        {"hidden_size": 128, "max_position_embeddings": 2048},
        overrides={"method": "ntk-margin", "factor": 4.0},
        full=lambda: (ntk_inv_freq(1e4, 5.0, 64), 1.0),
    ),
    Case(
        "ntk-yarn",
        {"hidden_size": 128, "max_position_embeddings": 2048},
        overrides={"method": "ntk-yarn", "factor": 4.0},
        by_row=_vector_rows({1: "ntk_margin_yarn_alfred", 8191: "ntk_margin_yarn_alfred"}, 64),
    ),
    Case(
        "dynamic-yarn",
        {"max_position_embeddings": 16384},
        overrides={"method": "dynamic-yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        by_row=_vector_rows({4095: "dynamic_yarn_L4096", 8191: "dynamic_yarn_L8192"}, 128),
    ),
    Case(
        "dynamic-ntk-unclamped",
        {},
        overrides={"method": "dynamic-ntk-unclamped", "original_max_position_embeddings": 4096},
        by_row=_vector_rows({2047: "dynamic_ntk_ratio_L2048", 8191: "dynamic_ntk_ratio_L8192"}, 128),
    ),
    Case(
        "qwen-dynamic-ntk",
        {"max_position_embeddings": 8192},
        overrides={"method": "qwen-dynamic-ntk", "original_max_position_embeddings": 2048},
        by_row=_vector_rows(
            {
                2047: "qwen1_dynamic_ntk_L2048_seq2048",
                2048: "qwen1_dynamic_ntk_L2049_seq2048",
                4095: "qwen1_dynamic_ntk_L4096_seq2048",
                8191: "qwen1_dynamic_ntk_L8192_seq2048",
            },
            128,
        ),
    ),
]


def _case_config(case: Case) -> dict[str, Any]:
    if case.id == "longrope":
        phi = checkpoint("microsoft__Phi-3.5-mini-instruct")
        return {
            # Phi-3.5-mini's real factors (48 = rotary_dim 96 / 2) on a tiny Llama body with head_dim 96
            "hidden_size": 192,
            "max_position_embeddings": phi["max_position_embeddings"],
            "original_max_position_embeddings": phi["original_max_position_embeddings"],
            "rope_theta": phi["rope_theta"],
            "rope_scaling": phi["rope_scaling"],
        }
    if case.id == "part-ntk":
        airophin = checkpoint("bhenrym14__airophin-13b-pntk-16k-fp16")
        return {k: airophin[k] for k in ("max_position_embeddings", "original_max_position_embeddings")}
    return case.config


def _longrope_reference() -> tuple[torch.Tensor, float]:
    phi = checkpoint("microsoft__Phi-3.5-mini-instruct")
    rs = phi["rope_scaling"]
    params = {
        "long_factor": rs["long_factor"],
        "short_factor": rs["short_factor"],
        "original_max_position_embeddings": 4096,
    }
    # the table covers 8192 > 4096 positions: transformers uses the long factors at that length
    return hf_frequencies(
        "longrope", params, head_dim=96, max_pos=phi["max_position_embeddings"], theta=1e4, seq_len=8192
    )


CASES[4].full = _longrope_reference


def check_case(case: Case, sin: torch.Tensor, cos: torch.Tensor) -> None:
    assert sin.shape[0] == case.rows
    if case.full is not None:
        inv, factor = case.full()
        ref_sin, ref_cos = table(inv, factor, case.rows)
        assert max_error(sin, ref_sin) <= TABLE_ATOL
        assert max_error(cos, ref_cos) <= TABLE_ATOL
    if case.by_row is not None:
        for position, (ref, factor) in case.by_row().items():
            if isinstance(ref, torch.Tensor):
                ref_sin, ref_cos = row(ref, factor, position)
                assert max_error(sin[position], ref_sin) <= TABLE_ATOL, position
                assert max_error(cos[position], ref_cos) <= TABLE_ATOL, position
            else:
                half = sin.shape[1] // 2
                for column, (s, c) in expected_at(ref, factor, position).items():
                    for col in (column, column + half):  # NEOX layout repeats the half-table
                        assert abs(float(sin[position, col]) - s) <= TABLE_ATOL, (position, col)
                        assert abs(float(cos[position, col]) - c) <= TABLE_ATOL, (position, col)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tables_equal_the_reference(exllamav2: Any, case: Case, tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / case.id, _case_config(case))
    with ropepatch.enabled(**case.overrides):
        _, sin, cos = build_tables(exllamav2, model_dir, case.rows)
    check_case(case, sin, cos)


# -- ExLlamaV2's own YaRN against transformers, and the fix ------------------------------------
def test_native_yarn_takes_its_correction_range_from_max_seq_len(exllamav2: Any, tmp_path: Path) -> None:
    if _version(exllamav2) < Version("0.2.3"):
        pytest.skip(f"exllamav2 {_version(exllamav2)} has no YaRN of its own (added in 0.2.3)")
    # "type", not "rope_type": before 0.2.9 ExLlamaV2 reads YaRN only under "type" (and silently
    # builds unscaled tables for a transformers-4.45+ style "rope_type": "yarn")
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    model_dir = write_model(tmp_path / "yarn", {"max_position_embeddings": 16384, "rope_scaling": yarn})
    inv, factor = hf_frequencies(
        "yarn", {"factor": 4.0, "original_max_position_embeddings": 4096}, head_dim=128, max_pos=16384, theta=1e4
    )
    ref_sin, _ = table(inv, factor, 16384)

    _, native_sin, _ = build_tables(exllamav2, model_dir, 16384)
    assert max_error(native_sin, ref_sin) > 0.5  # a different table, not rounding

    with ropepatch.enabled():
        _, fixed_sin, _ = build_tables(exllamav2, model_dir, 16384)
    assert max_error(fixed_sin, ref_sin) <= TABLE_ATOL

    if _version(exllamav2) >= Version("0.2.5"):
        # the frequencies themselves: max relative error of 1.08 at 16k (runtimes.md section 2), none once fixed
        import exllamav2.rope as rope

        cfg = exllamav2.ExLlamaV2Config()
        cfg.model_dir = str(model_dir)
        cfg.prepare(no_tensors=True)
        cfg.max_seq_len = 16384
        args = (cfg.rotary_embedding_base,) if _version(exllamav2) >= Version("0.2.9") else ()
        native_inv, native_factor = rope.get_rope_params("cpu", cfg, *args)
        assert float(((native_inv - inv).abs() / inv).max()) == pytest.approx(1.08, abs=0.01)
        with ropepatch.enabled():
            fixed_inv, fixed_factor = rope.get_rope_params("cpu", cfg, *args)
        assert float(((fixed_inv - inv).abs() / inv).max()) <= 1e-6
        assert fixed_factor == pytest.approx(factor, rel=1e-12) == pytest.approx(1.138629436111989)


def test_native_yarn_switches_off_within_the_original_context(exllamav2: Any, tmp_path: Path) -> None:
    if _version(exllamav2) < Version("0.2.3"):
        pytest.skip(f"exllamav2 {_version(exllamav2)} has no YaRN of its own (added in 0.2.3)")
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    model_dir = write_model(tmp_path / "yarn", {"max_position_embeddings": 16384, "rope_scaling": yarn})
    plain_sin, _ = table(hf_frequencies("linear", {"factor": 1.0}, head_dim=128, max_pos=4096, theta=1e4)[0], 1.0, 4096)
    inv, factor = hf_frequencies(
        "yarn", {"factor": 4.0, "original_max_position_embeddings": 4096}, head_dim=128, max_pos=16384, theta=1e4
    )
    yarn_sin, _ = table(inv, factor, 4096)

    if Version("0.2.5") <= _version(exllamav2) < Version("0.2.7"):
        # these versions do not even get there: their YaRN leaves its factor unset below the original context
        with pytest.raises(UnboundLocalError):
            build_tables(exllamav2, model_dir, 4096)
    else:
        _, native_sin, _ = build_tables(exllamav2, model_dir, 4096)
        assert max_error(native_sin, plain_sin) <= TABLE_ATOL  # unscaled, no temperature
    with ropepatch.enabled():
        _, fixed_sin, _ = build_tables(exllamav2, model_dir, 4096)
    assert max_error(fixed_sin, yarn_sin) <= TABLE_ATOL  # transformers' YaRN is static


# -- ExLlamaV2's own knobs ---------------------------------------------------------------------
def test_own_knobs_are_not_applied_on_top_of_the_spec(
    exllamav2: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ropepatch")
    model_dir = write_model(tmp_path / "linear", {"rope_scaling": {"type": "linear", "factor": 4.0}})
    inv, _ = hf_frequencies("linear", {"factor": 4.0}, head_dim=128, max_pos=4096, theta=1e4)
    ref_sin, _ = table(inv, 1.0, 8192)
    # text-generation-webui <= v4.0 set both knobs on every ExLlamaV2 load
    with ropepatch.enabled():
        _, sin, _ = build_tables(exllamav2, model_dir, 8192, scale_pos_emb=4.0, scale_alpha_value=2.5)
    assert max_error(sin, ref_sin) <= TABLE_ATOL
    line = next(r.getMessage() for r in caplog.records if "not applied" in r.getMessage())
    assert "scale_pos_emb=4" in line and "scale_alpha_value=2.5" in line and "linear" in line


def test_a_plain_spec_leaves_exllamav2_alone(exllamav2: Any, tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "plain", {})
    _, native_sin, native_cos = build_tables(exllamav2, model_dir, 4096, scale_alpha_value=2.0)
    with ropepatch.enabled():
        _, sin, cos = build_tables(exllamav2, model_dir, 4096, scale_alpha_value=2.0)
    assert torch.equal(sin, native_sin) and torch.equal(cos, native_cos)


def test_an_explicit_method_beats_the_checkpoint(exllamav2: Any, tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "linear", {"rope_scaling": {"type": "linear", "factor": 4.0}})
    with ropepatch.enabled(method="default"):
        _, sin, _ = build_tables(exllamav2, model_dir, 8192, scale_pos_emb=4.0)
    ref_sin, _ = table(ntk_inv_freq(1e4, 1.0, 128), 1.0, 8192)
    assert max_error(sin, ref_sin) <= TABLE_ATOL


# -- lifecycle ---------------------------------------------------------------------------------
def test_patch_model_rewrites_loaded_tables_in_place(exllamav2: Any, tmp_path: Path) -> None:
    model_dir = write_model(
        tmp_path / "yarn",
        {
            "max_position_embeddings": 16384,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        },
    )
    model, sin, _ = build_tables(exllamav2, model_dir, 8192)  # built before enable(): native tables
    ctx = (model.device_context if hasattr(model, "device_context") else model.device_tensors)[0]
    pointer = (ctx.sin[0] if isinstance(ctx.sin, list) else ctx.sin).data_ptr()
    assert ropepatch.patch_model(model) is model
    sin, _ = main_table(ctx)
    assert sin.data_ptr() == pointer  # same storage: a captured CUDA graph keeps reading it
    inv, factor = hf_frequencies(
        "yarn", {"factor": 4.0, "original_max_position_embeddings": 4096}, head_dim=128, max_pos=16384, theta=1e4
    )
    assert max_error(sin, table(inv, factor, 8192)[0]) <= TABLE_ATOL


def test_disable_restores_the_original_functions(exllamav2: Any) -> None:
    import importlib

    try:
        owner = importlib.import_module("exllamav2.device").ExLlamaV2DeviceContext
    except ImportError:
        owner = importlib.import_module("exllamav2.model").ExLlamaV2DeviceTensors
    before = owner.__dict__["prepare_sincos"]
    rope = importlib.import_module("exllamav2.rope") if _version(exllamav2) >= Version("0.2.5") else None
    rope_before = rope.get_rope_params if rope else None
    ropepatch.enable()
    assert "exllamav2" in ropepatch.runtime.status()["installed"]
    assert owner.__dict__["prepare_sincos"] is not before
    ropepatch.disable()
    assert owner.__dict__["prepare_sincos"] is before
    if rope:
        assert rope.get_rope_params is rope_before


def test_mrope_callers_get_the_spec_frequencies(exllamav2: Any, tmp_path: Path) -> None:
    if _version(exllamav2) < Version("0.2.9"):
        pytest.skip(f"exllamav2 {_version(exllamav2)}: get_rope_params has no base argument before 0.2.9")
    import exllamav2.rope as rope

    model_dir = write_model(
        tmp_path / "yarn",
        {
            "max_position_embeddings": 16384,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        },
    )
    cfg = exllamav2.ExLlamaV2Config()
    cfg.model_dir = str(model_dir)
    cfg.prepare(no_tensors=True)
    cfg.max_seq_len = 8192
    inv, factor = hf_frequencies(
        "yarn", {"factor": 4.0, "original_max_position_embeddings": 4096}, head_dim=128, max_pos=16384, theta=1e4
    )
    with ropepatch.enabled():
        got, got_factor = rope.get_rope_params("cpu", cfg, cfg.rotary_embedding_base)
        other, other_factor = rope.get_rope_params("cpu", cfg, 1e6)  # another base (a sliding-window family)
    assert float(((got - inv).abs() / inv).max()) <= 1e-6 and got_factor == pytest.approx(factor)
    native_other, native_other_factor = rope.get_rope_params("cpu", cfg, 1e6)
    assert torch.equal(other, native_other) and other_factor == native_other_factor


def test_installs_on_every_tested_version(exllamav2: Any) -> None:
    ropepatch.enable()
    status = ropepatch.runtime.status()
    assert "exllamav2" in status["installed"], status
    assert "exllamav2" not in status["skipped"] and "exllamav2" not in status["failures"]
