"""ExLlamaV3: RoPE modules built from a model's config carry the reference frequencies and factor.

Real ExLlamaV3 wheels (see exllama_harness.V3_VERSIONS) run on CPU: the real ``Config`` parses the
model's config.json and the real ``RoPE`` module is built from its settings, as ``Attention.load``
does. The only stand-in is the compiled CUDA extension module (its kernels are never called here;
``compute_sincos`` is ExLlamaV3's pure-torch path). No GPU machine is lent to this task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from exllama_harness import write_model
from exllama_reference import checkpoint, columns, hf_frequencies, ntk_inv_freq, vector

import ropepatch
from ropepatch.errors import RopeConfigError


def build_rope(exllamav3: Any, model_dir: Path) -> Any:
    """ExLlamaV3's own Config and RoPE for a checkpoint folder (what a layer gets at load)."""
    from exllamav3.util.rope import RoPE

    config = exllamav3.Config.from_directory(str(model_dir))
    return RoPE("cpu", config.rope_settings)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual.double() - expected.double()).abs() / expected.double().abs()).max())


def _hf(rope_type: str, params: dict[str, Any], **kw: Any) -> Any:
    return lambda: hf_frequencies(rope_type, params, **kw)


def _vector(case_id: str, dim: int) -> Any:
    def build() -> tuple[dict[int, float], float]:
        expected = vector(case_id)
        return columns(expected, dim), float(expected.get("attention_factor", 1.0))

    return build


YARN = {"factor": 4.0, "original_max_position_embeddings": 4096}

# (id, config, overrides, reference) - reference gives (float32 inv_freq or {column: value}, attention factor)
CASES = [
    (
        "linear",
        {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
        {},
        _hf("linear", {"factor": 4.0}, head_dim=128, max_pos=4096, theta=1e4),
    ),
    (
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
        {},
        _hf(
            "llama3",
            {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            head_dim=128,
            max_pos=131072,
            theta=5e5,
        ),
    ),
    (
        "yarn",
        {"max_position_embeddings": 16384, "rope_scaling": {"rope_type": "yarn", **YARN}},
        {},
        _hf("yarn", YARN, head_dim=128, max_pos=16384, theta=1e4),
    ),
    (
        "yarn-qwen-style",
        # Qwen2.5's card: max 32768 and original 32768 with factor 4; ExLlamaV3 recomputes factor = 1
        {
            "rope_theta": 1e6,
            "max_position_embeddings": 32768,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        },
        {},
        _hf("yarn", {"factor": 4.0, "original_max_position_embeddings": 32768}, head_dim=128, max_pos=32768, theta=1e6),
    ),
    ("longrope", None, {}, None),  # Phi-3.5-mini, filled in by _longrope
    ("ntk", {}, {"method": "ntk", "alpha": 2.0}, lambda: (ntk_inv_freq(1e4, 2.0, 128), 1.0)),
    ("part-ntk", None, {}, _vector("ntk_by_parts_3way_s4", 128)),  # airophin
    (
        "ntk-by-parts",
        {"max_position_embeddings": 16384},
        {"method": "ntk-by-parts", **YARN},
        lambda: (hf_frequencies("yarn", YARN, head_dim=128, max_pos=16384, theta=1e4)[0], 1.0),
    ),
    (
        "ntk-margin",
        {"hidden_size": 128},
        {"method": "ntk-margin", "factor": 4.0},
        lambda: (ntk_inv_freq(1e4, 5.0, 64), 1.0),
    ),
    ("ntk-yarn", {"hidden_size": 128}, {"method": "ntk-yarn", "factor": 4.0}, _vector("ntk_margin_yarn_alfred", 64)),
]


def _config(case_id: str, config: dict[str, Any] | None) -> dict[str, Any]:
    if case_id == "longrope":
        phi = checkpoint("microsoft__Phi-3.5-mini-instruct")
        return {
            "hidden_size": 192,
            **{
                k: phi[k]
                for k in ("max_position_embeddings", "original_max_position_embeddings", "rope_theta", "rope_scaling")
            },
        }
    if case_id == "part-ntk":
        airophin = checkpoint("bhenrym14__airophin-13b-pntk-16k-fp16")
        return {k: airophin[k] for k in ("max_position_embeddings", "original_max_position_embeddings")}
    assert config is not None
    return config


def _longrope() -> tuple[torch.Tensor, float]:
    phi = checkpoint("microsoft__Phi-3.5-mini-instruct")
    rs = phi["rope_scaling"]
    params = {
        "long_factor": rs["long_factor"],
        "short_factor": rs["short_factor"],
        "original_max_position_embeddings": 4096,
    }
    # configured context 131072 > 4096: long factors, as transformers uses past 4096 tokens
    return hf_frequencies("longrope", params, head_dim=96, max_pos=131072, theta=1e4, seq_len=131072)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rope_modules_carry_the_reference(exllamav3: Any, case: tuple[Any, ...], tmp_path: Path) -> None:
    case_id, config, overrides, reference = case
    if case_id == "longrope":
        reference = _longrope
    model_dir = write_model(tmp_path / case_id, _config(case_id, config))
    with ropepatch.enabled(**overrides):
        rope = build_rope(exllamav3, model_dir)
    expected, attention = reference()
    if isinstance(expected, torch.Tensor):
        assert rope.inv_freq.dtype == torch.float32 and rope.inv_freq.shape == expected.shape
        assert rel_error(rope.inv_freq, expected) <= 1e-6
    else:
        for column, value in expected.items():
            assert float(rope.inv_freq[column]) == pytest.approx(value, rel=1e-6)
    assert rope.attn_factor == pytest.approx(attention, rel=1e-12)
    # ExLlamaV3's own torch path turns them into the sin/cos the kernel computes
    sin, cos = rope.compute_sincos(torch.tensor([0, 1, 2047]))
    angle = 2047.0 * float(rope.inv_freq[1])
    assert float(sin[2, 1]) == pytest.approx(math.sin(angle) * attention, abs=1e-4)
    assert float(cos[2, 1]) == pytest.approx(math.cos(angle) * attention, abs=1e-4)


def test_native_yarn_factor_from_max_over_original_and_the_fix(exllamav3: Any, tmp_path: Path) -> None:
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    model_dir = write_model(
        tmp_path / "qwen", {"rope_theta": 1e6, "max_position_embeddings": 32768, "rope_scaling": scaling}
    )
    expected, attention = hf_frequencies(
        "yarn", {"factor": 4.0, "original_max_position_embeddings": 32768}, head_dim=128, max_pos=32768, theta=1e6
    )
    assert attention == pytest.approx(1.138629436111989)
    native = build_rope(exllamav3, model_dir)
    assert native.attn_factor == 1.0  # factor 32768/32768 = 1: no temperature, and unscaled frequencies
    assert rel_error(native.inv_freq, expected) > 1.0
    with ropepatch.enabled():
        fixed = build_rope(exllamav3, model_dir)
    assert rel_error(fixed.inv_freq, expected) <= 1e-6 and fixed.attn_factor == pytest.approx(attention)
    assert float(fixed.inv_freq[31]) == pytest.approx(vector("qwen2_5_yarn")["inv_freq[31]"], rel=1e-6)


@pytest.mark.parametrize(
    "config, overrides",
    [
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, {}),
        ({"max_position_embeddings": 16384}, {"method": "dynamic-yarn", **YARN}),
        ({}, {"method": "qwen-dynamic-ntk", "original_max_position_embeddings": 2048}),
    ],
    ids=["dynamic", "dynamic-yarn", "qwen-dynamic-ntk"],
)
def test_dynamic_methods_are_refused_with_a_way_out(
    exllamav3: Any, config: dict, overrides: dict, tmp_path: Path
) -> None:
    model_dir = write_model(tmp_path / "dyn", config)
    with ropepatch.enabled(**overrides), pytest.raises(RopeConfigError) as info:
        build_rope(exllamav3, model_dir)
    message = str(info.value)
    assert "ExLlamaV3 cannot run" in message and "ROPEPATCH=" in message


def test_layers_pinned_to_plain_rope_keep_it(exllamav3: Any, tmp_path: Path) -> None:
    from exllamav3.util.rope import RoPE, RopeStyle

    model_dir = write_model(
        tmp_path / "yarn", {"max_position_embeddings": 16384, "rope_scaling": {"rope_type": "yarn", **YARN}}
    )
    plain = torch.tensor([1.0 / 1e4 ** (2 * i / 128) for i in range(64)], dtype=torch.float64).float()
    with ropepatch.enabled():
        config = exllamav3.Config.from_directory(str(model_dir))
        # OLMo-3 / Laguna sliding-window layers and Gemma-3 local layers, read the way those architectures do
        swa = RoPE("cpu", config.read_rope_settings_default(RopeStyle.NEOX, override_type="default"))
        local = RoPE("cpu", config.read_rope_settings_default(RopeStyle.NEOX, default_rope_theta=1e4, config_dict={}))
        main = RoPE("cpu", config.rope_settings)
    for rope in (swa, local):
        assert rel_error(rope.inv_freq, plain) <= 1e-6 and rope.attn_factor == 1.0
    assert main.attn_factor == pytest.approx(1.138629436111989)


@pytest.mark.filterwarnings("ignore:.*llama_4_scaling_beta.*:ropepatch.RopepatchWarning")
def test_runtime_extras_survive(exllamav3: Any, tmp_path: Path) -> None:
    # Ministral-3 style: YaRN plus a Llama-4 query temperature that ExLlamaV3 applies in its kernel
    scaling = {"rope_type": "yarn", **YARN, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
    model_dir = write_model(tmp_path / "m3", {"max_position_embeddings": 16384, "rope_scaling": scaling})
    native = build_rope(exllamav3, model_dir)
    if not native.llama_4_scaling_beta:
        pytest.skip("this ExLlamaV3 version has no Llama-4 query scaling")
    with ropepatch.enabled():
        rope = build_rope(exllamav3, model_dir)
    assert rope.llama_4_scaling_beta == pytest.approx(0.1)
    expected, attention = hf_frequencies(
        "yarn", {**YARN, "mscale": 1.0, "mscale_all_dim": 1.0}, head_dim=128, max_pos=16384, theta=1e4
    )
    assert rel_error(rope.inv_freq, expected) <= 1e-6 and rope.attn_factor == pytest.approx(attention)


def test_deepseek_architectures_fold_the_softmax_scale_themselves(exllamav3: Any) -> None:
    import exllamav3.util.rope as rope_mod

    if not hasattr(rope_mod, "yarn_sm_scale_fold"):
        pytest.skip("this ExLlamaV3 version has no DeepSeek-style YaRN (yarn_mscale_ratio)")
    scaling = {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
    }
    settings = rope_mod.RopeSettings(
        head_dim=64, rope_theta=1e4, rope_scaling=scaling, max_position_embeddings=163840, yarn_mscale_ratio=True
    )
    with ropepatch.enabled():
        rope = rope_mod.RoPE("cpu", settings)
    # DeepSeek-V2-Lite: cos/sin 1.0, softmax x1.5896 (methods.md section 6) - the architecture applies the latter
    assert rope.attn_factor == pytest.approx(1.0)
    assert rope_mod.yarn_sm_scale_fold(scaling) == pytest.approx(1.5896261651208736, rel=1e-9)
    assert float(rope.inv_freq[31]) == pytest.approx(vector("deepseek_v2_lite_yarn")["inv_freq[31]"], rel=1e-6)
    with ropepatch.enabled(factor=20.0):  # overridden factor: cos/sin make up the difference to the arch's fold
        rope = rope_mod.RoPE("cpu", settings)
    wanted = (0.1 * 0.707 * math.log(20.0) + 1) ** 2
    assert rope.attn_factor**2 * rope_mod.yarn_sm_scale_fold(scaling) == pytest.approx(wanted, rel=1e-9)


def test_patch_model_and_disable(exllamav3: Any, tmp_path: Path) -> None:
    from exllamav3.util.rope import RoPE

    model_dir = write_model(
        tmp_path / "yarn", {"max_position_embeddings": 16384, "rope_scaling": {"rope_type": "yarn", **YARN}}
    )
    init = RoPE.__dict__["__init__"]
    config = exllamav3.Config.from_directory(str(model_dir))
    model = exllamav3.Model.from_config(config)
    rope = RoPE("cpu", config.rope_settings)  # built before enable(): ExLlamaV3's own (correct here) YaRN
    rope.inv_freq.mul_(2.0)  # make it visibly wrong
    holder = next(m for m in model.modules if hasattr(m, "modules"))
    holder.rope = rope
    pointer = rope.inv_freq.data_ptr()
    assert ropepatch.patch_model(model) is model
    expected, attention = hf_frequencies("yarn", YARN, head_dim=128, max_pos=16384, theta=1e4)
    assert rope.inv_freq.data_ptr() == pointer and rel_error(rope.inv_freq, expected) <= 1e-6
    ropepatch.enable()
    assert RoPE.__dict__["__init__"] is not init
    ropepatch.disable()
    assert RoPE.__dict__["__init__"] is init
    assert attention == pytest.approx(rope.attn_factor)
