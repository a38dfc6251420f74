"""GGUF scaling that lives in tensors: ``rope_freqs`` (Llama 3.x) and ``rope_factors_long/short`` (LongRoPE).

Files are written with the ``gguf`` package's GGUFWriter; the divisors come from an independent
re-implementation of the published llama3 rule as llama.cpp's converter applies it (tests/tiny_gguf.py),
and the expected frequencies from tests/data/reference/test-vectors.json and the published formulas.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf", reason="writing GGUF files needs the gguf package")
np = pytest.importorskip("numpy", reason="the gguf package writes numpy arrays")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny GGUF writer

import tiny_gguf as tg  # noqa: E402

from ropepatch import RopeConfigError, RopeSpec, detect  # noqa: E402
from ropepatch.metadata.gguf import MAX_ITEMS, TENSOR_NOTE, read_gguf_metadata  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def _detect(path: Path, **kw: Any) -> RopeSpec:
    return detect(path, use_env=False, emit_warnings=False, **kw)


def _plain(base: float, dim: int) -> list[float]:
    return [base ** (-2 * i / dim) for i in range(dim // 2)]


def _small(path: Path, tensors: dict[str, Any], *, dim: int = 128, base: float = 500000.0, **keys: Any) -> Path:
    """A metadata-only Llama header plus the given tensors (no weights: detection needs none)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(131072)
    w.add_rope_freq_base(base)
    w.add_rope_dimension_count(dim)
    for key, value in keys.items():
        getattr(w, key)(value)
    w.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    for name, values in tensors.items():
        w.add_tensor(name, values)
    w.add_tensor("output.weight", np.ones((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- llama3 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["llama3_d128_s8", "llama3_d64_s32", "llama3_d128_s4_b1e4"])
def test_rope_freqs_of_the_llama3_rule_is_llama3(tmp_path: Path, vectors: dict, case: str) -> None:
    p = vectors[case]["params"]
    expected = vectors[case]["expected"]
    divisors = tg.llama3_rope_freqs(
        p["base"],
        p["d"],
        p["factor"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["original_max_position_embeddings"],
    )
    # the converter's vector has the bands the reference counts
    ramp = int(((divisors > 1) & (divisors < p["factor"])).sum())
    assert (int((divisors == 1).sum()), ramp) == (expected["n_high_freq_kept"], expected["n_medium_smoothed"])
    path = _small(tmp_path / "m.gguf", {"rope_freqs.weight": divisors}, dim=p["d"], base=p["base"])
    spec = _detect(path)
    assert spec.method == "llama3"
    assert spec.factor == p["factor"]
    assert spec.original_max_position_embeddings == p["original_max_position_embeddings"]
    assert spec.method_params["low_freq_factor"] == p["low_freq_factor"]
    assert spec.method_params["high_freq_factor"] == p["high_freq_factor"]
    assert spec.max_position_embeddings == 131072 and "rope_freqs.weight" in spec.provenance["method"]
    inv, attention = spec.compute(None)
    for key in ("inv_freq[1]", "inv_freq[31]", "inv_freq[-1]"):
        i = int(key[9:-1])
        assert inv[i] == pytest.approx(expected[key], rel=1e-12), key
    assert attention == 1.0


def test_llama31_file_gives_the_published_parameters(tmp_path: Path) -> None:
    # the brief's case: a Llama-3.1-style GGUF (rope_freqs after the weights, as some tools reorder)
    divisors = tg.llama3_rope_freqs(**tg.LLAMA31)
    path = tg.write_llama(tmp_path / "m.gguf", divisors, hidden=256, heads=2, first=False)
    spec = _detect(path)
    assert (spec.method, spec.factor, spec.original_max_position_embeddings) == ("llama3", 8.0, 8192)
    assert dict(spec.method_params) == {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    # every frequency is the file's: plain / divisor, to float32 precision
    inv, _ = spec.compute(None)
    for got, plain, r in zip(inv, _plain(500000.0, 128), divisors, strict=True):
        assert got == pytest.approx(plain / float(r), rel=8 * 2.0**-23)


def test_the_file_states_its_original_context(tmp_path: Path) -> None:
    # low 2 / high 8 / 8192 and low 1 / high 4 / 4096 give the same vector: the file's key decides
    divisors = tg.llama3_rope_freqs(500000.0, 128, 8.0, 2.0, 8.0, 8192)
    plain = _detect(_small(tmp_path / "a.gguf", {"rope_freqs.weight": divisors}))
    assert (plain.original_max_position_embeddings, plain.method_params["high_freq_factor"]) == (4096, 4.0)
    stated = _detect(_small(tmp_path / "b.gguf", {"rope_freqs.weight": divisors}, add_rope_scaling_orig_ctx_len=8192))
    assert stated.method == "llama3" and stated.original_max_position_embeddings == 8192
    assert dict(stated.method_params) == {"low_freq_factor": 2.0, "high_freq_factor": 8.0}
    assert plain.compute(None)[0] == pytest.approx(stated.compute(None)[0], rel=1e-15)


# -- per-dim ------------------------------------------------------------------------------------
def test_a_vector_off_the_rule_by_one_part_in_ten_thousand_is_per_dim(tmp_path: Path) -> None:
    divisors = tg.llama3_rope_freqs(**tg.LLAMA31)
    ramp = [i for i, r in enumerate(divisors) if 1 < r < 8]
    divisors[ramp[2]] *= np.float32(1.0001)
    spec = _detect(_small(tmp_path / "m.gguf", {"rope_freqs.weight": divisors}))
    assert spec.method == "per-dim"
    assert list(spec.method_params["freq_factors"]) == [float(r) for r in divisors]


def test_per_dim_frequencies_are_the_published_definition(tmp_path: Path) -> None:
    # llama.cpp (ggml_rope_ext freq_factors): theta_i = pos * base^(-2i/d) / f_i, cos/sin unscaled
    divisors = (np.linspace(1.0, 3.0, 64) ** 2).astype(np.float32)
    spec = _detect(_small(tmp_path / "m.gguf", {"rope_freqs.weight": divisors}))
    assert spec.method == "per-dim"
    inv, attention = spec.compute(None)
    assert attention == 1.0 and spec.attention_factor(10**6) == 1.0
    for i, got in enumerate(inv):
        assert got == pytest.approx(500000.0 ** (-2 * i / 128) / float(divisors[i]), rel=1e-14)
    # the same numbers as LongRoPE's per-dimension division with one factor set and attention 1
    longrope = RopeSpec(
        method="longrope",
        rope_theta=500000.0,
        rotary_dim=128,
        original_max_position_embeddings=8192,
        params={"short_factor": divisors.tolist(), "long_factor": divisors.tolist(), "attention_factor": 1.0},
    )
    assert longrope.compute(None)[0] == pytest.approx(inv, rel=1e-15)


def test_per_dim_round_trips_and_checks_its_length() -> None:
    spec = RopeSpec(method="rope-freqs", rope_theta=10000.0, rotary_dim=8, params={"freq_factors": [1, 2, 4, 8]})
    assert spec.method == "per-dim"
    assert RopeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(RopeConfigError, match="freq_factors has 3 entries") as info:
        RopeSpec(method="per-dim", rope_theta=10000.0, rotary_dim=8, params={"freq_factors": [1, 2, 4]})
    assert info.value.key == "freq_factors"


def test_all_ones_is_plain(tmp_path: Path) -> None:
    spec = _detect(_small(tmp_path / "m.gguf", {"rope_freqs.weight": np.ones(64, np.float32)}))
    assert spec.method == "default"


def test_rope_freqs_with_linear_keys_is_their_product(tmp_path: Path) -> None:
    divisors = tg.llama3_rope_freqs(**tg.LLAMA31)
    path = _small(
        tmp_path / "m.gguf",
        {"rope_freqs.weight": divisors},
        add_rope_scaling_type=gguf.RopeScalingType.LINEAR,
        add_rope_scaling_factor=2.0,
    )
    spec = _detect(path)
    assert spec.method == "per-dim"
    assert list(spec.method_params["freq_factors"]) == [2.0 * float(r) for r in divisors]


def test_rope_freqs_with_yarn_keys_is_refused(tmp_path: Path) -> None:
    path = _small(
        tmp_path / "m.gguf",
        {"rope_freqs.weight": tg.llama3_rope_freqs(**tg.LLAMA31)},
        add_rope_scaling_type=gguf.RopeScalingType.YARN,
        add_rope_scaling_factor=4.0,
        add_rope_scaling_orig_ctx_len=8192,
    )
    with pytest.raises(RopeConfigError, match="both rope_freqs") as info:
        _detect(path)
    assert info.value.key == "rope_freqs.weight" and info.value.path == str(path)


# -- LongRoPE ---------------------------------------------------------------------------------
def _phi35() -> dict[str, Any]:
    return json.loads((CHECKPOINTS / "microsoft__Phi-3.5-mini-instruct.json").read_text())


@pytest.mark.parametrize("with_attn_key", [True, False])
def test_phi35_factor_tensors_are_longrope(tmp_path: Path, vectors: dict, with_attn_key: bool) -> None:
    cfg = _phi35()
    rs, L0, ctx = cfg["rope_scaling"], cfg["original_max_position_embeddings"], cfg["max_position_embeddings"]
    # llama.cpp's converter: factors as F32 tensors, attn_factor = sqrt(1 + ln(ctx/L0)/ln L0) as a key
    attn = math.sqrt(1 + math.log(ctx / L0) / math.log(L0)) if with_attn_key else None
    path = tg.write_phi3(
        tmp_path / "m.gguf",
        np.array(rs["long_factor"], np.float32),
        np.array(rs["short_factor"], np.float32),
        original=L0,
        context=ctx,
        attn_factor=attn,
        hidden=3072 // 32 * 4,  # Phi-3.5's head_dim 96
    )
    spec = _detect(path)
    assert spec.method == "longrope"
    assert (spec.original_max_position_embeddings, spec.max_position_embeddings) == (L0, ctx)
    assert spec.method_params["attention_factor"] is None  # derived by the method, equal to the key
    expected = vectors["phi3_5_mini_longrope_long"]["expected"]
    inv, attention = spec.compute(ctx)
    assert inv[0] == pytest.approx(expected["inv_freq[0]"], rel=1e-12)
    assert inv[-1] == pytest.approx(expected["inv_freq[-1]"], rel=1e-6)  # the reference ran in float32
    assert attention == pytest.approx(expected["attention_factor"], rel=1e-12)
    short, _ = spec.compute(L0)
    assert short[5] == pytest.approx(1 / (float(np.float32(rs["short_factor"][5])) * 10000.0 ** (10 / 96)), rel=1e-12)


def test_an_attention_factor_off_the_rule_is_kept_explicit(tmp_path: Path) -> None:
    f = np.linspace(1, 4, 8).astype(np.float32)
    path = tg.write_phi3(tmp_path / "m.gguf", f, f, original=1024, context=4096, attn_factor=1.25)
    spec = _detect(path)
    assert spec.method_params["attention_factor"] == 1.25 and spec.attention_factor(4096) == 1.25


def test_one_factor_set_alone_is_refused(tmp_path: Path) -> None:
    path = _small(tmp_path / "m.gguf", {"rope_factors_long.weight": np.ones(64, np.float32)})
    with pytest.raises(RopeConfigError, match="no rope_factors_short.weight") as info:
        _detect(path)
    assert info.value.key == "rope_factors_long.weight"


def test_longrope_type_without_factor_tensors_says_so(tmp_path: Path) -> None:
    path = _small(tmp_path / "m.gguf", {}, add_rope_scaling_type=gguf.RopeScalingType.LONGROPE)
    with pytest.raises(RopeConfigError, match="rope_factors_long/short tensors") as info:
        _detect(path)
    assert info.value.key == "llama.rope.scaling.type"


# -- the reader: bounded, typed, checked --------------------------------------------------------
def test_f16_and_custom_alignment_are_read(tmp_path: Path) -> None:
    divisors = np.array([1, 1.5, 2, 4], np.float16)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("a.weight", np.ones(7, np.float32))
    w.add_tensor("rope_freqs.weight", divisors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    meta = read_gguf_metadata(tmp_path / "m.gguf")
    assert meta["rope_freqs.weight"] == [1.0, 1.5, 2.0, 4.0] and meta["general.alignment"] == 64
    assert "rope_freqs.weight" not in read_gguf_metadata(tmp_path / "m.gguf", tensors=False)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.arange(64, dtype=np.int32) + 1, "ggml type 26"),
        (np.full(64, np.nan, np.float32), "value 0 is nan"),
        (-np.ones(64, np.float32), "value 0 is -1.0"),
        (np.ones((2, 32), np.float32), "shape [32, 2]"),
        (np.ones(1 << 15, np.float32), "shape [32768]"),
    ],
)
def test_bad_tensors_are_named(tmp_path: Path, values: Any, message: str) -> None:
    path = _small(tmp_path / "m.gguf", {"rope_freqs.weight": values})
    with pytest.raises(RopeConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        _detect(path)
    assert info.value.key == "rope_freqs.weight" and info.value.path == str(path)


def test_rope_freqs_of_the_wrong_length_is_named(tmp_path: Path) -> None:
    path = _small(tmp_path / "m.gguf", {"rope_freqs.weight": np.ones(32, np.float32)}, dim=128)
    with pytest.raises(RopeConfigError, match="has 32 divisors but the rotary dim is 128") as info:
        _detect(path)
    assert info.value.key == "rope_freqs.weight"


def test_truncated_data_is_named_and_a_header_excerpt_is_a_warning(tmp_path: Path) -> None:
    full = _small(tmp_path / "m.gguf", {"rope_freqs.weight": tg.llama3_rope_freqs(**tg.LLAMA31)}).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: len(full) - 200])  # the data section cut short: the end of rope_freqs is lost
    with pytest.raises(RopeConfigError, match="lie past the end of the file") as info:
        _detect(cut)
    assert info.value.key == "rope_freqs.weight"
    # only the key/value header (a tensor-info table that stops after its first entry)
    header = tmp_path / "header.gguf"
    header.write_bytes(full[: full.index(b"rope_freqs.weight") + 20])
    meta = read_gguf_metadata(header)
    assert "rope_freqs.weight" not in meta and "could not be read" in meta[TENSOR_NOTE]
    spec = detect(header, use_env=False, emit_warnings=False)
    assert spec.method == "default" and any("rope_freqs" in w for w in spec.warnings)


def test_bad_alignment_is_named_when_a_rope_tensor_needs_it(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_uint32("general.alignment", 48)
    w.add_tensor("rope_freqs.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(RopeConfigError, match="power of two") as info:
        read_gguf_metadata(tmp_path / "m.gguf")
    assert info.value.key == "general.alignment"


def test_a_huge_tensor_count_is_a_note_not_a_hang(tmp_path: Path) -> None:
    # 2^22 + 1 tensors declared in a 128 MiB sparse file: it could hold them, the item budget refuses at once
    data = bytearray(b"GGUF" + struct.pack("<IQQ", 3, MAX_ITEMS + 1, 1))
    key, value = b"general.architecture", b"llama"
    data += struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(value)) + value
    path = tmp_path / "m.gguf"
    with open(path, "wb") as fh:
        fh.write(data)
        fh.truncate(MAX_ITEMS * 32)  # enough room that only the budget refuses
    meta = read_gguf_metadata(path)
    assert "tensors, beyond the" in meta[TENSOR_NOTE]
