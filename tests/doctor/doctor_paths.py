"""Where the shared checkpoint corpus is (shared/checkpoints beside the repository), if anywhere."""

from __future__ import annotations

from pathlib import Path


def _corpus() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "checkpoints"
        if candidate.is_dir():
            return candidate
    return None


CORPUS = _corpus()
