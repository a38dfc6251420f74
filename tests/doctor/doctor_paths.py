"""Where the checkpoint corpus is (tests/data/checkpoints, inside the repository), and what the installed
transformers does with it on its own where releases differ."""

from __future__ import annotations

from pathlib import Path

CORPUS: Path = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def _native_legacy_su() -> bool:
    try:
        import transformers
        from packaging.version import Version
    except ImportError:
        return False
    return Version(transformers.__version__) >= Version("5.25")


#: transformers 5.25 loads legacy Phi-3 'su' configs (top-level original) as LongRoPE by itself;
#: 5.0-5.24 fail with a KeyError naming original_max_position_embeddings
NATIVE_LEGACY_SU: bool = _native_legacy_su()
