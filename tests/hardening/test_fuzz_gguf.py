"""Hostile and broken GGUF headers: truncated files, huge declared lengths, wrong magic or version,
duplicate keys, unknown types, values of the wrong type. Every file ends in a correct spec or a
RopeConfigError naming the file (and the key being read), fast, and the reader's peak memory
follows the bytes actually on disk, never a length the header merely declares.

GGUF files are written by the tests' own tiny writer (hardening_kit.gguf_header), which is checked
byte for byte against the ``gguf`` package's GGUFWriter.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import hardening_kit as kit
import hardening_strategies as hs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ropepatch import RopeConfigError, detect
from ropepatch.metadata.gguf import read_gguf_metadata

MANIFEST = json.loads((kit.CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
KIB = 1024


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-gguf")


def reader_peak(path: Path) -> int:
    """Peak bytes the GGUF reader allocates for ``path`` (RopeConfigError or not)."""
    tracemalloc.start()
    try:
        read_gguf_metadata(path)
    except RopeConfigError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@kit.fuzz_settings(900)
@given(data=hs.gguf_files(), layout=st.sampled_from(["file", "folder", "no-suffix"]))
def test_gguf_headers_end_in_spec_or_named_error(workdir: Path, data: bytes, layout: str) -> None:
    folder = workdir / "ckpt"
    folder.mkdir(exist_ok=True)
    name = "weights" if layout == "no-suffix" else "model.gguf"
    for old in folder.iterdir():
        old.unlink()
    path = kit.write_bytes(folder / name, data)
    source = folder if layout == "folder" else path
    kit.outcome_of(
        "gguf-file",
        lambda: detect(source, use_env=False, emit_warnings=False),
        path=str(path),
        payload=data,
        suffix=".gguf",
    )
    if data[:4] == b"GGUF":
        # memory follows the file: arrays kept as Python lists cost at most ~9x their bytes
        assert reader_peak(path) <= 16 * len(data) + 64 * KIB


# -- huge declared sizes in a 1 KB file --------------------------------------------------------
def realistic_kvs(n_tokens: int = 60) -> list[tuple[str, int, Any]]:
    return [
        ("general.architecture", kit.STRING, "llama"),
        ("general.name", kit.STRING, "Yarn-Mistral-7b-128k"),
        ("llama.context_length", kit.U32, 131072),
        ("llama.rope.freq_base", kit.F32, 10000.0),
        ("llama.rope.dimension_count", kit.U32, 128),
        ("llama.rope.scaling.type", kit.STRING, "yarn"),
        ("llama.rope.scaling.factor", kit.F32, 16.0),
        ("llama.rope.scaling.original_context_length", kit.U32, 8192),
        ("llama.rope.scaling.finetuned", kit.BOOL, True),
        ("tokenizer.ggml.scores", kit.ARRAY, (kit.F32, [0.5] * 8)),
        ("llama.rope.sections", kit.ARRAY, (kit.ARRAY, [(kit.I32, [1, 2]), (kit.I32, [3])])),
        ("tokenizer.ggml.tokens", kit.ARRAY, (kit.STRING, [f"tok{i}" for i in range(n_tokens)])),
    ]


def _field(img: kit.GGUFImage, what: str, nth: int = 0) -> tuple[int, int]:
    hits = [(off, width) for off, width, w in img.lengths if w == what]
    return hits[nth]


# (description, which length field, index among fields of that kind, key the error must name)
HUGE_CASES = [
    ("kv count", "kv count", 0, None),
    ("key length", "key", 3, None),
    ("general.name string", "value string", 1, "general.name"),
    ("f32 array count", "value array", 0, "tokenizer.ggml.scores"),
    ("array of arrays count", "value array", 1, "llama.rope.sections"),
    ("inner array count", "value item array", 0, "llama.rope.sections"),
    ("string array count", "value array", 2, "tokenizer.ggml.tokens"),
    ("string in a string array", "value item string", 5, "tokenizer.ggml.tokens"),
]


@pytest.mark.parametrize("version", [3, 1])
@pytest.mark.parametrize("declared", [2**60, 2**64 - 1, 2**32 - 1])
@pytest.mark.parametrize("case", HUGE_CASES, ids=[c[0] for c in HUGE_CASES])
def test_huge_declared_length_fails_fast_in_small_memory(
    tmp_path: Path, case: tuple[str, str, int, str | None], declared: int, version: int
) -> None:
    _, what, nth, key = case
    img = kit.gguf_header(realistic_kvs(), version=version)
    assert 800 <= len(img.data) <= 1400  # a ~1 KB file
    offset, width = _field(img, what, nth)
    if width == 4 and declared >= 2**32:
        declared = 2**32 - 1  # version 1 lengths are 32-bit
    img.data[offset : offset + width] = declared.to_bytes(width, "little")
    path = kit.write_bytes(tmp_path / "model.gguf", bytes(img.data))

    with kit.timed() as t, pytest.raises(RopeConfigError) as info:
        read_gguf_metadata(path)
    assert t["s"] < 0.5, f"took {t['s']:.3f} s"
    assert "malformed GGUF header" in str(info.value) and info.value.path == str(path)
    if key is not None:
        assert info.value.key == key, str(info.value)
    peak = reader_peak(path)
    assert peak < 64 * KIB, f"peak {peak} bytes for a {len(img.data)}-byte file declaring {declared}"
    kit.outcome_of("gguf-huge-length", lambda: detect(path, use_env=False), path=str(path))


def test_large_skipped_vocabulary_costs_no_memory(tmp_path: Path) -> None:
    # 1.5 MB of tokenizer strings: skipped by seeking, never materialised
    img = kit.gguf_header(realistic_kvs(n_tokens=100_000))
    path = kit.write_bytes(tmp_path / "model.gguf", bytes(img.data))
    assert len(img.data) > 1_000_000
    assert reader_peak(path) < 128 * KIB
    spec = detect(path, use_env=False, emit_warnings=False)
    assert (spec.method, spec.factor, spec.original_max_position_embeddings, spec.rotary_dim) == (
        "yarn",
        16.0,
        8192,
        128,
    )


# -- structural damage ---------------------------------------------------------------------------
def test_every_truncation_of_a_valid_file_is_a_named_error(tmp_path: Path) -> None:
    data = bytes(kit.gguf_header(realistic_kvs(n_tokens=4)).data)
    path = tmp_path / "model.gguf"
    for cut in range(len(data)):
        kit.write_bytes(path, data[:cut])
        kit.outcome_of("gguf-truncation", lambda: detect(path, use_env=False), path=str(path))
        with pytest.raises(RopeConfigError):
            read_gguf_metadata(path)
    kit.write_bytes(path, data)
    assert detect(path, use_env=False, emit_warnings=False).method == "yarn"


def test_duplicate_key_is_named(tmp_path: Path) -> None:
    kvs = realistic_kvs(4)
    kvs.append(("llama.rope.scaling.factor", kit.F32, 4.0))
    path = kit.write_bytes(tmp_path / "model.gguf", bytes(kit.gguf_header(kvs).data))
    with pytest.raises(RopeConfigError, match="duplicate metadata key") as info:
        detect(path, use_env=False)
    assert info.value.key == "llama.rope.scaling.factor" and info.value.path == str(path)


@pytest.mark.parametrize(
    ("magic", "version", "message"),
    [
        (b"GGUf", 3, "not a GGUF file"),
        (b"GGUF", 0, "unsupported GGUF version 0"),
        (b"GGUF", 4, "unsupported GGUF version 4"),
        (b"GGUF", 2**32 - 1, "unsupported GGUF version 4294967295"),
    ],
)
def test_wrong_magic_or_version(tmp_path: Path, magic: bytes, version: int, message: str) -> None:
    path = kit.write_bytes(
        tmp_path / "model.gguf", bytes(kit.gguf_header(realistic_kvs(4), magic=magic, version=version).data)
    )
    with pytest.raises(RopeConfigError, match=message) as info:
        detect(path, use_env=False)
    assert info.value.path == str(path)


@pytest.mark.parametrize("vtype", [13, 255, 2**32 - 1])
def test_unknown_value_type_names_the_key(tmp_path: Path, vtype: int) -> None:
    kvs = realistic_kvs(4)
    kvs.insert(3, ("llama.rope.freq_base", vtype, None))
    kvs.pop(4)  # the real freq_base
    path = kit.write_bytes(tmp_path / "model.gguf", bytes(kit.gguf_header(kvs).data))
    with pytest.raises(RopeConfigError, match=f"unknown value type {vtype}") as info:
        detect(path, use_env=False)
    assert info.value.key == "llama.rope.freq_base"


@pytest.mark.parametrize(
    ("key", "vtype", "value", "named"),
    [
        ("llama.attention.head_count", kit.F32, float("nan"), "llama.attention.head_count"),
        ("llama.attention.head_count", kit.F32, 0.5, "llama.attention.head_count"),
        ("llama.attention.head_count", kit.F32, float("inf"), "llama.attention.head_count"),
        ("llama.rope.scaling.factor", kit.F32, float("nan"), "llama.rope.scaling.factor"),
        ("llama.rope.scaling.factor", kit.F32, -4.0, "llama.rope.scaling.factor"),
        ("llama.rope.freq_base", kit.F32, 1.0, "llama.rope.freq_base"),
        ("llama.rope.dimension_count", kit.U32, 2**32 - 1, "llama.rope.dimension_count"),
        ("llama.rope.scaling.type", kit.U8, 1, "llama.rope.scaling.type"),
    ],
)
def test_wrong_values_name_their_key(tmp_path: Path, key: str, vtype: int, value: Any, named: str) -> None:
    kvs = [kv for kv in realistic_kvs(4) if kv[0] != key]
    kvs += [("llama.embedding_length", kit.U32, 4096), (key, vtype, value)]
    path = kit.write_bytes(tmp_path / "model.gguf", bytes(kit.gguf_header(kvs).data))
    assert kit.outcome_of("gguf-wrong-value", lambda: detect(path, use_env=False), path=str(path)) is None
    with pytest.raises(RopeConfigError) as info:
        detect(path, use_env=False)
    assert info.value.key == named, str(info.value)


# -- the writer against the gguf package ------------------------------------------------------
gguf = pytest.importorskip("gguf", reason="the gguf package (pip install gguf) is the reference writer/reader")


def _reference_file(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(131072)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(128)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(16.0)
    w.add_rope_scaling_orig_ctx_len(8192)
    w.add_rope_scaling_finetuned(True)
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "c"])
    w.add_name("x")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SAME_KVS = [
    ("general.architecture", kit.STRING, "llama"),
    ("llama.context_length", kit.U32, 131072),
    ("llama.rope.freq_base", kit.F32, 10000.0),
    ("llama.rope.dimension_count", kit.U32, 128),
    ("llama.rope.scaling.type", kit.STRING, "yarn"),
    ("llama.rope.scaling.factor", kit.F32, 16.0),
    ("llama.rope.scaling.original_context_length", kit.U32, 8192),
    ("llama.rope.scaling.finetuned", kit.BOOL, True),
    ("tokenizer.ggml.tokens", kit.ARRAY, (kit.STRING, ["a", "bb", "c"])),
    ("general.name", kit.STRING, "x"),
]


def test_writer_matches_the_gguf_package_byte_for_byte(tmp_path: Path) -> None:
    reference = _reference_file(tmp_path / "ref.gguf").read_bytes()
    ours = bytes(kit.gguf_header(SAME_KVS).data)
    # GGUFWriter pads the header to its 32-byte alignment; the bytes before the padding are the header
    assert reference[: len(ours)] == ours
    assert set(reference[len(ours) :]) <= {0} and len(reference) % 32 == 0


def test_gguf_reader_reads_our_files(tmp_path: Path) -> None:
    ours = bytes(kit.gguf_header(SAME_KVS).data)
    path = kit.write_bytes(tmp_path / "ours.gguf", ours + b"\0" * (-len(ours) % 32))
    fields = gguf.GGUFReader(str(path)).fields
    for key, _, value in SAME_KVS:
        got = fields[key].contents()
        want = value[1] if isinstance(value, tuple) else value
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, key


def test_ropepatch_reads_the_gguf_package_files(tmp_path: Path) -> None:
    path = _reference_file(tmp_path / "ref.gguf")
    meta = read_gguf_metadata(path)
    assert meta["llama.rope.scaling.type"] == "yarn" and meta["llama.rope.scaling.finetuned"] is True
    spec = detect(path, use_env=False, emit_warnings=False)
    assert (spec.method, spec.factor, spec.original_max_position_embeddings, spec.rotary_dim, spec.rope_theta) == (
        "yarn",
        16.0,
        8192,
        128,
        10000.0,
    )
    assert spec.method_params["finetuned"] is True


# -- regression corpus ---------------------------------------------------------------------
GGUF_CASES = sorted((kit.CORPUS / "gguf").glob("*.gguf"))


@pytest.mark.parametrize("path", GGUF_CASES, ids=[p.stem for p in GGUF_CASES])
def test_gguf_corpus_replays(path: Path, tmp_path: Path) -> None:
    entry = MANIFEST[f"gguf/{path.name}"]
    target = kit.write_bytes(tmp_path / "model.gguf", path.read_bytes())
    spec = kit.outcome_of("corpus-gguf", lambda: detect(target, use_env=False, emit_warnings=False), path=str(target))
    if entry["expect"] == "error":
        assert spec is None, entry["bug"]
        with pytest.raises(RopeConfigError) as info:
            detect(target, use_env=False, emit_warnings=False)
        if entry.get("exact"):
            assert info.value.key == entry["key"], (entry, str(info.value))
        assert entry["key"] in (info.value.key or ""), (entry, str(info.value))
    else:
        assert spec is not None and spec.method == entry["method"], entry["bug"]


def test_struct_layout_of_the_writer() -> None:
    # the first bytes are the spec's fixed header: magic, u32 version, u64 tensors, u64 kv count
    data = bytes(kit.gguf_header([("a", kit.U8, 7)]).data)
    assert data[:4] == b"GGUF"
    assert struct.unpack("<IQQ", data[4:24]) == (3, 0, 1)
    assert struct.unpack("<Q", data[24:32]) == (1,) and data[32:33] == b"a"
    assert struct.unpack("<IB", data[33:38]) == (kit.U8, 7)
