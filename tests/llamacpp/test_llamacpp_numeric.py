"""Real llama.cpp (llama-cpp-python, built from source) vs transformers + ropepatch: logits past the original context.

Every method llama.cpp can express, on the same random weights written once as a GGUF and once as a
transformers model (no downloads); plus the bug this fixes: a YaRN model converted without its
scaling keys runs as plain RoPE in llama.cpp. ``compat/llamacpp/run.py`` prints the same comparison as
the compat table row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'ropepatch[llamacpp]' builds it)"
)
pytest.importorskip("transformers", reason="the reference is transformers + ropepatch")

from llamacpp_numeric import CASES, run_case  # noqa: E402

#: float32 in both runtimes, different summation orders: observed about 1e-5 (the compat table has the numbers)
AGREE = 1e-3
#: what "wrong" means: the disagreement of plain RoPE with the YaRN model, orders of magnitude above AGREE
WRONG = 0.1


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_llamacpp_matches_transformers(case, tmp_path: Path) -> None:
    result = run_case(case, tmp_path)
    if case.expect_wrong:
        assert result["past_original"] > WRONG, result
    else:
        assert result["all"] < AGREE, result
        assert result["scale"] > 1.0, result  # the logits are not trivially small
