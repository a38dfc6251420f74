"""The bundled default text for perplexity: public domain, shipped with the package."""

from __future__ import annotations

from importlib import resources

__all__ = ["DEFAULT_TEXT", "default_text"]

#: about 190 KB of Shakespeare (Coriolanus, then the opening of Richard III): public domain; the
#: first part of the "tinyshakespeare" compilation used by character-level language-model demos
DEFAULT_TEXT = "shakespeare.txt"


def default_text() -> tuple[str, str]:
    """``(text, name)`` of the bundled text."""
    path = resources.files("ropepatch.evaluation").joinpath("data").joinpath(DEFAULT_TEXT)
    return path.read_text(encoding="utf-8"), f"bundled {DEFAULT_TEXT} (Shakespeare, public domain)"
