"""Byte-level ids are the UTF-8 bytes, through the codec and through the saved tokenizer.json."""

from __future__ import annotations

from transformers import AutoTokenizer

from ropepatch.evaluation.byte_tokens import ByteCodec, save_byte_level_tokenizer

TEXT = "def f(x):\n\treturn 'héllo ✓'  # ok\r\n"


def test_codec_ids_are_utf8_bytes():
    codec = ByteCodec()
    assert codec.encode(TEXT) == list(TEXT.encode("utf-8"))
    assert codec.decode(codec.encode(TEXT)) == TEXT


def test_saved_tokenizer_loads_offline_with_the_same_ids(tmp_path):
    save_byte_level_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT
    assert len(tok) == 256
