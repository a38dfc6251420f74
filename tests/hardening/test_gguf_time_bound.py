"""GGUF headers that claim far more than they hold: a time bound, not only a memory bound.

A sparse file costs no disk space yet reads as gigabytes of zeros, i.e. as arrays of empty strings. The
reader must skip an ignored array in O(1) for fixed-size items (one seek) and in a bounded bulk scan for
strings, and refuse declared counts beyond the file or the per-file item cap at once, naming the key.
Every case here is a real sparse 1 GiB file written with seek + truncate; each must end (spec or named
RopeConfigError) in under 2 s.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import hardening_kit as kit
import pytest

from ropepatch import RopeConfigError, detect
from ropepatch.metadata.gguf import MAX_ITEMS, TENSOR_NOTE, read_gguf_metadata

GIB = 1 << 30
LIMIT_S = 2.0

#: the keys after the big array: a YaRN x16 file, so a spec that comes back can be checked
ROPE_KVS: list[tuple[str, int, Any]] = [
    ("llama.context_length", kit.U32, 131072),
    ("llama.rope.freq_base", kit.F32, 10000.0),
    ("llama.rope.dimension_count", kit.U32, 128),
    ("llama.rope.scaling.type", kit.STRING, "yarn"),
    ("llama.rope.scaling.factor", kit.F32, 16.0),
    ("llama.rope.scaling.original_context_length", kit.U32, 8192),
]
HEAD_KVS: list[tuple[str, int, Any]] = [
    ("general.architecture", kit.STRING, "llama"),
    ("general.name", kit.STRING, "sparse"),
]


@pytest.fixture(autouse=True, scope="module")
def _plugins_loaded() -> None:
    # the first detect() of a process loads the plugins (imports); the bound is about reading the file
    from ropepatch.registry import get_registry

    get_registry()


def _entries(kvs: list[tuple[str, int, Any]]) -> bytes:
    """The key/value bytes of ``kvs`` alone (the 24-byte file header cut off)."""
    return bytes(kit.gguf_header(kvs).data[24:])


def sparse_gguf(
    path: Path,
    *,
    array: tuple[str, int, int],
    body: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    tail: list[tuple[str, int, Any]] | None = None,
    tail_at: int | None = None,
    n_kv: int | None = None,
    size: int = GIB,
) -> Path:
    """A ``size``-byte sparse GGUF: HEAD_KVS, then ``array = (key, element type, declared count)`` whose
    items are the file's holes (plus ``body``: ``(offset, bytes)`` written into it), then ``tail`` entries
    written at ``tail_at``."""
    key, etype, count = array
    tail = ROPE_KVS if tail is None else tail
    kvs = HEAD_KVS + [(key, kit.ARRAY, (etype, []))]
    img = kit.gguf_header(kvs, n_kv=len(kvs) + len(tail) if n_kv is None else n_kv)
    head = bytearray(img.data)
    off, width, _ = [f for f in img.lengths if f[2] == "value array"][-1]
    head[off : off + width] = count.to_bytes(width, "little")
    with open(path, "wb") as fh:
        fh.write(head)
        for at, data in body:
            fh.seek(len(head) + at)
            fh.write(data)
        if tail and tail_at is not None:
            fh.seek(len(head) + tail_at)
            fh.write(_entries(tail))
        fh.truncate(size)
    assert os.path.getsize(path) == size
    # really sparse: the file takes (almost) no disk space
    assert os.stat(path).st_blocks * 512 < 8 << 20, "the test filesystem does not keep sparse files sparse"
    return path


def timed_detect(path: Path, target: str) -> Any:
    """detect() timed, then again under the watchdog and the invariant check (counted under ``target``);
    the spec, or None after a RopeConfigError."""
    with kit.timed() as t:
        try:
            detect(path, use_env=False, emit_warnings=False)
        except RopeConfigError:
            pass
    assert t["s"] < LIMIT_S, f"took {t['s']:.2f} s"
    return kit.outcome_of(target, lambda: detect(path, use_env=False, emit_warnings=False), path=str(path))


def expect_named_refusal(path: Path, key: str | None, message: str) -> None:
    with kit.timed() as t, pytest.raises(RopeConfigError) as info:
        read_gguf_metadata(path)
    assert t["s"] < LIMIT_S, f"took {t['s']:.2f} s"
    assert message in str(info.value), str(info.value)
    assert info.value.key == key and info.value.path == str(path), str(info.value)


def _yarn(spec: Any) -> None:
    assert spec is not None
    assert (spec.method, spec.factor, spec.original_max_position_embeddings) == ("yarn", 16.0, 8192)


# -- fixed-size items: one seek --------------------------------------------------------------
@pytest.mark.parametrize("etype,size", [(kit.F32, 4), (kit.U8, 1), (kit.F64, 8)])
def test_huge_fixed_size_array_is_one_seek(tmp_path: Path, etype: int, size: int) -> None:
    # the array fills the whole 1 GiB but the last KiB, where the rope keys are
    room = GIB - 4096
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.scores", etype, room // size), tail_at=room)
    spec = timed_detect(path, "gguf-sparse-1gib")
    _yarn(spec)


def test_fixed_size_array_past_the_end_is_refused(tmp_path: Path) -> None:
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.scores", kit.F32, GIB // 4 + 1))
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, "tokenizer.ggml.scores", "does not fit in the file")


# -- strings: bounded bulk scan ------------------------------------------------------------------
def test_string_array_beyond_the_item_cap_is_refused_at_once(tmp_path: Path) -> None:
    # 2**27 empty strings fit in 1 GiB of zeros: the old reader walked them one by one (about a day)
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, (GIB - 4096) // 8))
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, "tokenizer.ggml.tokens", f"beyond the {MAX_ITEMS} strings")


def test_string_array_past_the_end_is_refused(tmp_path: Path) -> None:
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, GIB // 8 + 1))
    expect_named_refusal(path, "tokenizer.ggml.tokens", "does not fit in the file")


def test_empty_strings_up_to_the_cap_are_scanned_in_bulk(tmp_path: Path) -> None:
    # MAX_ITEMS empty strings (32 MiB of holes), then the rope keys: accepted, quickly
    count = MAX_ITEMS - len(HEAD_KVS) - 1 - len(ROPE_KVS)
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, count), tail_at=count * 8)
    spec = timed_detect(path, "gguf-sparse-1gib")
    _yarn(spec)


def test_large_strings_are_seeked_over(tmp_path: Path) -> None:
    # 1000 strings that each declare 1 MiB of holes: only their length prefixes are read
    n, each = 1000, 1 << 20
    body = [(i * (8 + each), struct.pack("<Q", each)) for i in range(n)]
    path = sparse_gguf(
        tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, n), body=body, tail_at=n * (8 + each)
    )
    spec = timed_detect(path, "gguf-sparse-1gib")
    _yarn(spec)


def test_empty_strings_written_as_real_zeros(tmp_path: Path) -> None:
    # not sparse: 2^20 empty strings as 8 MiB of zero bytes on disk, then the rope keys (the scanned path)
    n = 1 << 20
    kvs = HEAD_KVS + [("tokenizer.ggml.tokens", kit.ARRAY, (kit.STRING, []))]
    img = kit.gguf_header(kvs, n_kv=len(kvs) + len(ROPE_KVS))
    head = bytearray(img.data)
    off, width, _ = [f for f in img.lengths if f[2] == "value array"][-1]
    head[off : off + width] = n.to_bytes(width, "little")
    path = kit.write_bytes(tmp_path / "m.gguf", bytes(head) + bytes(8 * n) + _entries(ROPE_KVS))
    _yarn(timed_detect(path, "gguf-real-vocabulary"))


def test_a_string_running_past_the_end_names_the_key(tmp_path: Path) -> None:
    body = [(0, struct.pack("<Q", 0)), (8, struct.pack("<Q", GIB))]
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.merges", kit.STRING, 3), body=body)
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, "tokenizer.ggml.merges", "runs past the end of the file")


def test_holes_after_a_capped_string_array_are_a_named_error(tmp_path: Path) -> None:
    # a million empty strings, then nothing but zeros: the next "entry" has an empty key, then another
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, 1 << 20), tail=[], n_kv=10)
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, "", "duplicate metadata key")


# -- nested arrays and entry counts -------------------------------------------------------------
def test_array_of_arrays_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    # each inner array is a 4-byte type (0 = u8) and an 8-byte count of 0: 12 bytes of zeros
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.nested", kit.ARRAY, (GIB - 4096) // 12))
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, "tokenizer.ggml.nested", f"beyond the {MAX_ITEMS}")


def test_entry_count_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    path = sparse_gguf(tmp_path / "m.gguf", array=("tokenizer.ggml.tokens", kit.STRING, 0), n_kv=(GIB - 4096) // 13)
    timed_detect(path, "gguf-sparse-1gib")
    expect_named_refusal(path, None, "metadata entries, beyond")


def test_a_real_sized_vocabulary_still_reads_fast(tmp_path: Path) -> None:
    # a 262144-token vocabulary and as many merges (Gemma 3's size; Llama 3: 128256 + 280147): not sparse
    kvs = HEAD_KVS + [
        ("tokenizer.ggml.tokens", kit.ARRAY, (kit.STRING, [f"t{i}" for i in range(1 << 18)])),
        ("tokenizer.ggml.merges", kit.ARRAY, (kit.STRING, [f"a{i} b" for i in range(1 << 18)])),
        *ROPE_KVS,
    ]
    path = kit.write_bytes(tmp_path / "m.gguf", bytes(kit.gguf_header(kvs).data))
    spec = timed_detect(path, "gguf-real-vocabulary")
    _yarn(spec)


# -- the tensor-info table (walked for the RoPE tensors) ------------------------------------------
def _tensor_table_file(path: Path, n_tensors: int) -> Path:
    """The keys of a YaRN x16 file, then ``n_tensors`` declared over 1 GiB of holes."""
    head = bytes(kit.gguf_header(HEAD_KVS + ROPE_KVS, n_tensors=n_tensors).data)
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(GIB)
    assert os.stat(path).st_blocks * 512 < 8 << 20
    return path


def test_tensor_count_beyond_the_cap_is_a_note_at_once(tmp_path: Path) -> None:
    path = _tensor_table_file(tmp_path / "m.gguf", (GIB - 4096) // 24)
    spec = timed_detect(path, "gguf-sparse-1gib")
    _yarn(spec)  # the keys stand; the tensors are reported as unread
    assert "tensors, beyond the" in read_gguf_metadata(path)[TENSOR_NOTE]


def test_empty_tensor_entries_up_to_the_cap_are_walked_in_bulk(tmp_path: Path) -> None:
    # 2^22 - 8 entries of 24 zero bytes (96 MiB of holes): walked, nothing found, quickly
    path = _tensor_table_file(tmp_path / "m.gguf", MAX_ITEMS - len(HEAD_KVS) - len(ROPE_KVS))
    spec = timed_detect(path, "gguf-sparse-1gib")
    _yarn(spec)
    assert TENSOR_NOTE not in read_gguf_metadata(path)
