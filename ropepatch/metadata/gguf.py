"""Read the key/value header of a GGUF file with bounded memory; tensors are never read.

Only the keys ropepatch needs are kept (``general.*`` strings and ``{arch}.rope.*``, context and
attention sizes); everything else, tokenizer arrays included, is skipped by seeking. Every declared
length is checked against the bytes actually left in the file before anything is allocated, so a
hostile header cannot make the reader allocate memory it did not find on disk.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from typing import Any, BinaryIO

from ropepatch.errors import RopeConfigError

__all__ = ["is_gguf", "read_gguf_metadata"]

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
    def __init__(self, fh: BinaryIO, size: int, path: str) -> None:
        self.fh, self.size, self.path = fh, size, path
        self.version = 3

    def left(self) -> int:
        return self.size - self.fh.tell()

    def fail(self, msg: str, key: str | None = None) -> RopeConfigError:
        return RopeConfigError(f"malformed GGUF header: {msg}", path=self.path, key=key)

    def read(self, n: int, key: str | None = None) -> bytes:
        if n > self.left():
            raise self.fail(f"needs {n} more bytes at offset {self.fh.tell()} but the file ends", key)
        return self.fh.read(n)

    def skip(self, n: int, key: str | None = None) -> None:
        if n > self.left():
            raise self.fail(f"declares {n} bytes at offset {self.fh.tell()} past the end of the file", key)
        self.fh.seek(n, os.SEEK_CUR)

    def scalar(self, fmt: str, size: int, key: str | None = None) -> Any:
        return struct.unpack(fmt, self.read(size, key))[0]

    def length(self, key: str | None = None) -> int:
        if self.version == 1:
            return int(self.scalar("<I", 4, key))
        return int(self.scalar("<Q", 8, key))

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
                    self.skip(count * size, key)
                    return None
                fmt = "<" + _SCALARS[etype][0][1] * count
                return list(struct.unpack(fmt, self.read(count * size, key)))
            if etype in (_STRING, _ARRAY):
                # every element takes at least its 8-byte length: refuse counts the file cannot hold
                if count * (4 if self.version == 1 else 8) > self.left():
                    raise self.fail(f"declares an array of {count} items that does not fit in the file", key)
                items = []
                keep_items = keep and count <= MAX_KEPT_ARRAY
                for _ in range(count):
                    item = self.value(etype, key, keep_items, depth + 1)
                    if keep_items:
                        items.append(item)
                return items if keep_items else None
            raise self.fail(f"unknown array element type {etype}", key)
        raise self.fail(f"unknown value type {vtype}", key)


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The RoPE-relevant key/value pairs of a GGUF file's header (plus ``gguf.version``)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise RopeConfigError("not a regular file (a device, pipe or socket cannot hold metadata)", path=str(path))
        size = info.st_size
        fh = open(path, "rb")
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
        r.length()  # tensor count: tensors are never read
        kv_count = r.length()
        if kv_count * 13 > r.left():  # key length + key + type + smallest value
            raise r.fail(f"declares {kv_count} metadata entries that cannot fit in the file")
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
        return out
