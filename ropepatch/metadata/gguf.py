"""Read a GGUF file's key/value header, and its few RoPE tensors, in bounded memory and bounded time.

Only the keys ropepatch needs are kept (``general.*`` strings and ``{arch}.rope.*``, context and
attention sizes); everything else, tokenizer arrays included, is skipped. Every declared length is
checked against the bytes actually left in the file before anything is allocated, so a hostile header
cannot make the reader allocate memory it did not find on disk. Time is bounded too: an array of
fixed-size items is skipped with one seek whatever its count; strings are skipped by parsing their
length prefixes straight from a 64 KiB read-ahead window, a run of zero bytes (as a sparse file's
holes read) in one step, and a hole the filesystem reports (``SEEK_DATA``) without reading it; and the
number of variable-size items a file may declare is capped (:data:`MAX_ITEMS`), so a header that
claims more fails at once with the key that claimed it.

Some scaling lives in tensors, not keys: llama.cpp bakes Llama 3.1's into ``rope_freqs.weight`` (one
divisor per rotary frequency) and LongRoPE's into ``rope_factors_long/short.weight``. After the keys the
tensor-info table is walked (names, shapes, types and offsets only, within the same item budget) and
just those tensors are read from the data section: at most :data:`MAX_TENSOR_VALUES` values each, as
``{name: [float, ...]}`` entries of the result. A table that is missing or cut short (a header-only
excerpt) is not an error: the result then carries :data:`TENSOR_NOTE` saying why nothing was read.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
from typing import Any, BinaryIO

from ropepatch.errors import RopeConfigError

__all__ = ["MAX_ITEMS", "MAX_TENSOR_VALUES", "ROPE_TENSORS", "TENSOR_NOTE", "is_gguf", "read_gguf_metadata"]

MAGIC = b"GGUF"
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_KEEP = re.compile(
    r"^(general\.[a-z_.]+|[a-z0-9_]+\.(rope\..+|context_length|embedding_length|attention\.(head_count|head_count_kv|key_length)))$"
)
MAX_KEY = 65535
MAX_KEPT_STRING = 1 << 16
MAX_KEPT_ARRAY = 1 << 16
#: the most variable-size items (metadata entries, strings in arrays, nested arrays) one file may declare.
#: Each costs Python time to walk, so this bounds the time a header can take (seconds), whatever it claims;
#: real files hold well under a million (a 262k-token vocabulary plus its merges).
MAX_ITEMS = 1 << 22
_CHUNK = 1 << 16
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_ZEROS = re.compile(rb"\x00+")
_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)

#: llama.cpp's tensors that hold RoPE scaling (per-dimension divisors), read when present
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_ROPE_NAME_LENGTHS = frozenset(len(name) for name in ROPE_TENSORS)
#: the most values such a tensor may have (one per rotary frequency: real ones have 32 to 256)
MAX_TENSOR_VALUES = 1 << 14
#: key of the result that says why the tensor-info table could not be walked
TENSOR_NOTE = "gguf.tensor_note"
_GGML_MAX_DIMS = 4
#: ggml type id -> (name, bytes per value, struct code); the converters write these tensors as F32
_GGML_FLOATS = {0: ("F32", 4, "f"), 1: ("F16", 2, "e"), 30: ("BF16", 2, "H")}


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the GGUF magic."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # opening a FIFO would block
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return False


class _Reader:
    """A cursor over the file with its own read-ahead window (one ``read`` per 64 KiB, not per field)."""

    def __init__(self, fh: BinaryIO, size: int, path: str) -> None:
        self.fh, self.size, self.path = fh, size, path
        self.version = 3
        self.pos = 0
        self.buf, self.buf_at = b"", 0
        self.budget = MAX_ITEMS

    @property
    def width(self) -> int:
        """Bytes of a length field: 4 in version 1, 8 later."""
        return 4 if self.version == 1 else 8

    def left(self) -> int:
        return self.size - self.pos

    def fail(self, msg: str, key: str | None = None) -> RopeConfigError:
        return RopeConfigError(f"malformed GGUF header: {msg}", path=self.path, key=key)

    def window(self, n: int, key: str | None = None) -> int:
        """Make the window hold the next ``n`` bytes; their index in ``self.buf``."""
        if n > self.left():
            raise self.fail(f"needs {n} more bytes at offset {self.pos} but the file ends", key)
        start = self.pos - self.buf_at
        if 0 <= start and start + n <= len(self.buf):
            return start
        self.buf = b""  # drop the old window before reading the next one (peak memory: one window)
        self.fh.seek(self.pos)
        self.buf, self.buf_at = self.fh.read(min(max(n, _CHUNK), self.left())), self.pos
        if len(self.buf) < n:
            raise self.fail(f"the file ended at offset {self.pos + len(self.buf)} while it was read", key)
        return 0

    def zero_run(self, i: int) -> int:
        """End (index in the window, may lie past it) of the run of zero bytes at ``self.buf[i]``.

        A run that reaches the end of the window goes on through the hole after it, if the filesystem
        reports one (``SEEK_DATA``): a sparse file's gigabytes of holes cost one call, not a scan.
        """
        run = _ZEROS.match(self.buf, i)
        stop = run.end() if run else i
        if stop == len(self.buf) and _SEEK_DATA is not None:
            at = self.buf_at + stop
            try:
                data = os.lseek(self.fh.fileno(), at, _SEEK_DATA)
            except OSError as exc:  # ENXIO: nothing but holes up to the end; others: no hole information
                data = self.size if exc.errno == errno.ENXIO else at
            stop += max(0, min(data, self.size) - at)
        return stop

    def read(self, n: int, key: str | None = None) -> bytes:
        i = self.window(n, key)
        self.pos += n
        return self.buf[i : i + n]

    def skip(self, n: int, key: str | None = None) -> None:
        if n > self.left():
            raise self.fail(f"declares {n} bytes at offset {self.pos} past the end of the file", key)
        self.pos += n

    def scalar(self, fmt: str, size: int, key: str | None = None) -> Any:
        i = self.window(size, key)
        self.pos += size
        return struct.unpack_from(fmt, self.buf, i)[0]

    def length(self, key: str | None = None) -> int:
        if self.version == 1:
            return int(self.scalar("<I", 4, key))
        return int(self.scalar("<Q", 8, key))

    def charge(self, count: int, what: str, key: str | None = None) -> None:
        """Spend ``count`` of the file's item budget (every item costs Python time, so their number is capped)."""
        if count > self.budget:
            raise self.fail(
                f"declares {count} {what}, beyond the {MAX_ITEMS} strings, nested arrays and entries ropepatch "
                "walks per file (real files hold well under a million)",
                key,
            )
        self.budget -= count

    def string(self, key: str | None, keep: bool, limit: int = MAX_KEPT_STRING) -> str | None:
        n = self.length(key)
        if n > self.left():
            raise self.fail(f"declares a string of {n} bytes but only {self.left()} remain", key)
        if not keep or n > limit:
            self.skip(n, key)
            return None
        raw = self.read(n, key)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not valid UTF-8", key) from None

    def skip_strings(self, count: int, key: str) -> None:
        """Skip ``count`` strings: length prefixes parsed straight from the window, runs of zero bytes in bulk."""
        w = self.width
        unpack = (_U32 if w == 4 else _U64).unpack_from
        while count:
            i = self.window(w, key)
            buf, end = self.buf, len(self.buf)
            while count and i + w <= end:
                if not buf[i]:
                    # a run of zero bytes is a run of empty strings (a sparse file's holes read as zeros)
                    k = min((self.zero_run(i) - i) // w, count)
                    if k:
                        i += k * w
                        count -= k
                        continue
                i += w + unpack(buf, i)[0]
                count -= 1
            buf = b""  # let the next window replace this one rather than sit beside it
            self.pos = self.buf_at + i
            if self.pos > self.size:
                raise self.fail("a string of the array runs past the end of the file", key)

    def value(self, vtype: int, key: str, keep: bool, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            v = self.scalar(fmt, size, key)
            return v if keep else None
        if vtype == _STRING:
            return self.string(key, keep)
        if vtype == _ARRAY:
            if depth > 2:
                raise self.fail("arrays nested deeper than 2 levels", key)
            etype = int(self.scalar("<I", 4, key))
            count = self.length(key)
            if etype in _SCALARS:
                size = _SCALARS[etype][1]
                if count * size > self.left():
                    raise self.fail(f"declares an array of {count} items that does not fit in the file", key)
                if not keep or count > MAX_KEPT_ARRAY:
                    self.skip(count * size, key)  # fixed-size items: one seek, whatever the count
                    return None
                fmt = "<" + _SCALARS[etype][0][1] * count
                return list(struct.unpack(fmt, self.read(count * size, key)))
            if etype in (_STRING, _ARRAY):
                # every element takes at least its length field (an array also its type): refuse counts the
                # file cannot hold, then counts beyond the item budget, before walking anything
                least = self.width + (4 if etype == _ARRAY else 0)
                if count * least > self.left():
                    raise self.fail(f"declares an array of {count} items that does not fit in the file", key)
                self.charge(count, "strings or arrays in one array", key)
                keep_items = keep and count <= MAX_KEPT_ARRAY
                if etype == _STRING and not keep_items:
                    self.skip_strings(count, key)
                    return None
                items = []
                for _ in range(count):
                    item = self.value(etype, key, keep_items, depth + 1)
                    if keep_items:
                        items.append(item)
                return items if keep_items else None
            raise self.fail(f"unknown array element type {etype}", key)
        raise self.fail(f"unknown value type {vtype}", key)


def read_gguf_metadata(path: str | os.PathLike[str], *, tensors: bool = True) -> dict[str, Any]:
    """The RoPE-relevant key/value pairs of a GGUF file's header (plus ``gguf.version``).

    With ``tensors`` (the default), also the values of the :data:`ROPE_TENSORS` the file has, under their
    names, or :data:`TENSOR_NOTE` when the tensor-info table could not be walked.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise RopeConfigError("not a regular file (a device, pipe or socket cannot hold metadata)", path=str(path))
        size = info.st_size
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - the reader keeps its own read-ahead window
    except OSError as exc:
        raise RopeConfigError(f"cannot read GGUF file: {exc.strerror or exc}", path=path) from None
    with fh:
        r = _Reader(fh, size, path)
        if size < 4 or r.read(4) != MAGIC:
            raise RopeConfigError("not a GGUF file (wrong magic bytes)", path=path)
        version = int(r.scalar("<I", 4))
        if version not in (1, 2, 3):
            raise RopeConfigError(f"unsupported GGUF version {version} (ropepatch reads 1-3)", path=path)
        r.version = version
        n_tensors = r.length()
        kv_count = r.length()
        if kv_count * 13 > r.left():  # key length + key + type + smallest value
            raise r.fail(f"declares {kv_count} metadata entries that cannot fit in the file")
        r.charge(kv_count, "metadata entries")
        out: dict[str, Any] = {"gguf.version": version}
        seen: set[str] = set()
        for _ in range(kv_count):
            key = r.string(None, True, limit=MAX_KEY)
            if key is None:
                raise r.fail("a metadata key is longer than 65535 bytes")
            if key in seen:
                raise r.fail("duplicate metadata key", key)
            seen.add(key)
            vtype = int(r.scalar("<I", 4, key))
            keep = bool(_KEEP.match(key))
            value = r.value(vtype, key, keep)
            if keep and value is not None:
                out[key] = value
        if tensors and n_tensors:
            _read_rope_tensors(r, n_tensors, out)
        return out


def _read_rope_tensors(r: _Reader, n_tensors: int, out: dict[str, Any]) -> None:
    """Walk the tensor-info table; add the values of the :data:`ROPE_TENSORS` found to ``out``."""
    try:
        found, table_end = _walk_tensor_infos(r, n_tensors)
    except RopeConfigError as exc:
        # a header-only excerpt or a cut download: the keys stand, the tensors are unknown (and said so)
        out[TENSOR_NOTE] = f"the tensor-info table could not be read ({exc.reason})"
        return
    if not found:
        return
    align = out.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or not 0 < align <= 1 << 30 or align & (align - 1):
        raise RopeConfigError(
            f"must be a power of two (the data section starts at a multiple of it), got {align!r}",
            path=r.path,
            key="general.alignment",
        )
    data_start = -(-table_end // align) * align
    for name, (dims, gtype, offset) in found.items():
        out[name] = _tensor_values(r, name, dims, gtype, data_start + offset)


def _walk_tensor_infos(r: _Reader, n_tensors: int) -> tuple[dict[str, tuple[list[int], int, int]], int]:
    """``({rope tensor name: (dims, ggml type, offset)}, offset where the table ends)``.

    Entries are parsed straight from the read-ahead window, like skipped strings; a run of zero bytes is a
    run of empty 0-dimension entries (a sparse file's holes), skipped in one step.
    """
    w = r.width
    least = w + 4 + 4 + 8  # name length, dimension count, type, offset (an empty name, no dims)
    if n_tensors * least > r.left():
        raise r.fail(f"declares {n_tensors} tensors that cannot fit in the file")
    r.charge(n_tensors, "tensors")
    wanted = {name.encode(): name for name in ROPE_TENSORS}
    unpack_len = (_U32 if w == 4 else _U64).unpack_from
    dims_code = "I" if w == 4 else "Q"
    found: dict[str, tuple[list[int], int, int]] = {}
    left, need = n_tensors, least
    while left:
        i = r.window(need)
        buf, end = r.buf, len(r.buf)
        need = least
        while left:
            if i + least > end:
                break
            if not buf[i]:
                k = min((r.zero_run(i) - i) // least, left)
                if k:
                    i += k * least
                    left -= k
                    continue
            n = unpack_len(buf, i)[0]
            if n > MAX_KEY:
                raise r.fail(f"a tensor name of {n} bytes (at most {MAX_KEY})")
            j = i + w + n
            if j + 4 > end:
                need = j + 4 - i  # the entry runs past the window: read it whole next time
                break
            n_dims = _U32.unpack_from(buf, j)[0]
            name = wanted.get(buf[i + w : j]) if n in _ROPE_NAME_LENGTHS else None
            if n_dims > _GGML_MAX_DIMS:
                raise r.fail(f"a tensor with {n_dims} dimensions (ggml has at most {_GGML_MAX_DIMS})", name)
            stop = j + 4 + n_dims * w + 4 + 8
            if stop > end:
                need = stop - i
                break
            if name is not None:
                if name in found:
                    raise r.fail("duplicate tensor name", name)
                dims = list(struct.unpack_from(f"<{n_dims}{dims_code}", buf, j + 4))
                gtype, offset = struct.unpack_from("<IQ", buf, j + 4 + n_dims * w)
                found[name] = (dims, gtype, offset)
            i = stop
            left -= 1
        buf = b""  # let the next window replace this one rather than sit beside it
        r.pos = r.buf_at + i
    return found, r.pos


def _tensor_values(r: _Reader, name: str, dims: list[int], gtype: int, start: int) -> list[float]:
    """The values of one small float tensor: bounded, typed and checked (finite, positive divisors)."""

    def bad(msg: str) -> RopeConfigError:
        return RopeConfigError(f"malformed GGUF tensor: {msg}", path=r.path, key=name)

    count = 1
    for d in dims:
        count *= d
    if not dims or count == 0 or count > MAX_TENSOR_VALUES or sum(d != 1 for d in dims) > 1:
        raise bad(f"shape {dims}: a RoPE factor table is one row of 1 to {MAX_TENSOR_VALUES} values")
    if gtype not in _GGML_FLOATS:
        raise bad(f"ggml type {gtype}; ropepatch reads F32, F16 or BF16 here (llama.cpp's converters write F32)")
    kind, size, code = _GGML_FLOATS[gtype]
    if start + count * size > r.size:
        raise bad(
            f"its {count * size} bytes at offset {start} lie past the end of the file ({r.size} bytes); "
            "the file is truncated: download it again"
        )
    r.pos = start
    raw = r.read(count * size, name)
    values = struct.unpack(f"<{count}{code}", raw)
    if kind == "BF16":  # the upper half of a float32
        values = struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *(v << 16 for v in values)))
    out = [float(v) for v in values]
    for i, v in enumerate(out):
        if not (math.isfinite(v) and v > 0):
            raise bad(f"value {i} is {v!r}; every per-dimension factor must be a finite positive number")
    return out
