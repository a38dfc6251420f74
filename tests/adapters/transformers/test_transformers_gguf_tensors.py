"""transformers' GGUF loader and the scaling llama.cpp keeps in tensors.

``from_pretrained(dir, gguf_file=...)`` ignores ``rope_freqs`` (Llama 3.x) and ``rope_factors_long/short``
(LongRoPE): such a model loads with plain RoPE. Under ropepatch it gets the file's frequencies. References:
the file's own divisors with the published definitions (``base^(-2i/d) / rope_freqs[i]``; LongRoPE's
``1/(f_i base^(2i/d))`` and ``sqrt(1 + ln s / ln L0)``), computed here in float64.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from tf_tiny import rotary_of

pytest.importorskip("gguf", reason="writing and loading GGUF files needs the gguf package")
pytest.importorskip("accelerate", reason="from_pretrained(gguf_file=...) needs accelerate")
np = pytest.importorskip("numpy", reason="the gguf package writes numpy arrays")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tiny_gguf as tg  # noqa: E402

F32_REL = 4 * 2.0**-23  # what float32 inv_freq (transformers computes in float32) can agree to


def _load(folder: Path, name: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)


def _reference(base: float, dim: int, divisors: list[float]) -> torch.Tensor:
    return torch.tensor([base ** (-2 * i / dim) / r for i, r in enumerate(divisors)], dtype=torch.float64)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want) / want).abs().max().item()


def test_llama31_gguf_gets_its_rope_freqs(tmp_path: Path) -> None:
    import ropepatch

    divisors = [float(r) for r in tg.llama3_rope_freqs(**tg.LLAMA31)]
    tg.write_llama(tmp_path / "tiny.gguf", np.array(divisors, np.float32), hidden=256, heads=2, heads_kv=1)
    plain = rotary_of(_load(tmp_path, "tiny.gguf"))
    assert plain.rope_type == "default"
    assert _rel(plain.inv_freq, _reference(500000.0, 128, [1.0] * 64)) < F32_REL

    ropepatch.enable()
    model = _load(tmp_path, "tiny.gguf")
    rot = rotary_of(model)
    assert rot.rope_type == "llama3" and rot.attention_scaling == 1.0
    rp = model.config.rope_parameters
    assert (rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]) == (8.0, 1.0, 4.0)
    assert rp["original_max_position_embeddings"] == 8192
    assert _rel(rot.inv_freq, _reference(500000.0, 128, divisors)) < F32_REL
    # without ropepatch the low frequencies are 8x too high, the high ones untouched
    ratio = plain.inv_freq / rot.inv_freq
    assert ratio[-1].item() == pytest.approx(8.0, rel=F32_REL) and ratio[0].item() == 1.0
    # and it shows past the original context: the angles the model rotates by at position 20000
    pos = torch.tensor([[20000]])
    want = torch.cos(20000 * _reference(500000.0, 128, divisors))
    cos, _ = rot(torch.zeros(1), pos)
    cos_plain, _ = plain(torch.zeros(1), pos)
    assert (cos[0, 0, :64].double() - want).abs().max().item() < 1e-3
    assert (cos_plain[0, 0, :64].double() - want).abs().max().item() > 0.5


def test_per_dim_gguf_is_applied_as_given(tmp_path: Path) -> None:
    import ropepatch

    divisors = [float(r) for r in (np.linspace(1.0, 3.0, 64) ** 2).astype(np.float32)]
    tg.write_llama(tmp_path / "tiny.gguf", np.array(divisors, np.float32), hidden=256, heads=2, heads_kv=1)
    ropepatch.enable()
    rot = rotary_of(_load(tmp_path, "tiny.gguf"))
    # transformers' own longrope with one factor set and attention 1 computes the per-dim frequencies
    assert rot.rope_type == "longrope" and rot.attention_scaling == 1.0
    want = _reference(500000.0, 128, divisors)
    assert _rel(rot.inv_freq, want) < F32_REL
    rot(torch.zeros(1), torch.arange(200_000)[None])  # past every context: the same frequencies
    assert _rel(rot.inv_freq, want) < F32_REL and rot.attention_scaling == 1.0


def test_phi3_longrope_gguf(tmp_path: Path) -> None:
    import ropepatch

    d, L0, ctx = 16, 1024, 4096
    long = np.linspace(1.0, 8.0, d // 2).astype(np.float32)
    short = np.linspace(1.0, 1.5, d // 2).astype(np.float32)
    attn = math.sqrt(1 + math.log(ctx / L0) / math.log(L0))  # LongRoPE's rule, as llama.cpp's converter stores it
    tg.write_phi3(tmp_path / "phi.gguf", long, short, original=L0, context=ctx, attn_factor=attn)
    plain = rotary_of(_load(tmp_path, "phi.gguf"))
    assert plain.rope_type == "default" and plain.attention_scaling == 1.0

    ropepatch.enable()
    model = _load(tmp_path, "phi.gguf")
    rot = rotary_of(model)
    assert type(model).__name__ == "Phi3ForCausalLM" and rot.rope_type == "longrope"
    assert model.config.rope_parameters["original_max_position_embeddings"] == L0
    assert rot.attention_scaling == pytest.approx(attn, rel=1e-12)
    assert _rel(rot.inv_freq, _reference(10000.0, d, [float(f) for f in short])) < F32_REL
    rot(torch.zeros(1), torch.arange(L0 + 1)[None])  # one token past L0: the long factors
    assert _rel(rot.inv_freq, _reference(10000.0, d, [float(f) for f in long])) < F32_REL
