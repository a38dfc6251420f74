"""CI's slice of the compatibility matrix: the oldest supported transformers in its own venv.

The newest supported version is the one the test environment itself installs, where the whole
adapter suite (tests/adapters/transformers) runs; this runs compat/run.py for the legacy end of
the range, exactly as the committed compat/MATRIX.md was made.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LEGACY = "4.36.2"


@pytest.mark.slow
def test_legacy_transformers_passes_the_compat_tests():
    proc = subprocess.run(
        [sys.executable, str(REPO / "compat" / "run.py"), "--versions", LEGACY, "--no-table"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every compat test file runs (the override tests joined the original six), none fails or is skipped
    found = re.search(rf"transformers {re.escape(LEGACY)}: (\d+) passed(?P<rest>[^\n]*)", proc.stdout)
    assert found, proc.stdout
    collected = len(list((REPO / "compat" / "transformers").glob("test_*.py")))
    assert int(found.group(1)) >= 6 * collected and "failed" not in found["rest"] and "skipped" not in found["rest"]
