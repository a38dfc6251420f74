"""Where the checkpoint corpus is: tests/data/checkpoints, inside the repository."""

from __future__ import annotations

from pathlib import Path

CORPUS: Path = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
