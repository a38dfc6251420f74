"""Byte-level tokens: token id = byte value (0-255), with no vocabulary file needed.

``ropepatch eval --byte-level`` uses :class:`ByteCodec` directly; :func:`save_byte_level_tokenizer`
writes an equivalent ``tokenizer.json`` next to a byte-level model so ``AutoTokenizer`` loads it
offline too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ByteCodec", "byte_level_tokenizer", "save_byte_level_tokenizer"]


class ByteCodec:
    """Encode text as UTF-8 bytes and back; the minimal tokenizer interface eval needs."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Ids back to text (invalid UTF-8 replaced)."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _bytes_to_unicode() -> dict[int, str]:
    # the printable stand-in characters the `tokenizers` ByteLevel pre-tokenizer maps bytes to:
    # printable Latin-1 bytes stand for themselves, the rest are shifted past 255 in byte order
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + shift)
            shift += 1
    return out


def byte_level_tokenizer() -> Any:
    """A ``transformers`` fast tokenizer whose ids are the UTF-8 bytes of the text."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    mapping = _bytes_to_unicode()
    # a BPE model with the 256 byte symbols and no merges: exactly one token per byte
    core = Tokenizer(models.BPE(vocab={mapping[b]: b for b in range(256)}, merges=[]))
    core.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def save_byte_level_tokenizer(directory: str | Path) -> None:
    """Write ``tokenizer.json`` (and its config) for byte-level ids into ``directory``."""
    byte_level_tokenizer().save_pretrained(str(directory))
