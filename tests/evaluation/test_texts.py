"""The bundled default text ships with the package and is what eval reads without --text."""

from __future__ import annotations

from ropepatch.evaluation.texts import default_text


def test_default_text_is_the_bundled_public_domain_play():
    text, name = default_text()
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert 150_000 < len(text.encode()) < 200_000
    assert "public domain" in name
