"""``compat/run.py --latest``'s bookkeeping: what CI pins, how a TGI checkout's release is read, the table.

The runs themselves install releases from the package index into venvs (minutes each); they are the
maintainer's command, not CI's. These check the parts a wrong regex would silently break.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "compat"))

import latest  # noqa: E402
import run  # noqa: E402


def test_ci_pins_the_newest_matrix_column_and_the_harness_newest_wheels():
    pins = latest.ci_pins()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"transformers=={pins["transformers"]}"' in pyproject
    # the matrix's newest column is what CI pins: CI runs the whole suite on exactly that release
    assert pins["transformers"] == max(run.VERSIONS, key=latest._key) == run.VERSIONS[-1]
    harness = (REPO / "tests" / "adapters" / "exllama" / "exllama_harness.py").read_text()
    for dist, name in (("exllamav2", "V2_VERSIONS"), ("exllamav3", "V3_VERSIONS")):
        listed = re.findall(r'"([\d.]+)"', re.search(rf"^{name} = \((.*)\)", harness, re.M).group(1))
        assert pins[dist] == listed[-1]  # the lists are oldest first


def test_matrix_keeps_the_legacy_columns():
    assert {"4.36.2", "4.46.3", "4.57.6", "5.23.0", "5.24.0", "5.25.0"} <= set(run.VERSIONS)


def test_tgi_release_from_a_checkout(tmp_path):
    assert latest.tgi_version(tmp_path) is None
    (tmp_path / "Cargo.toml").write_text(
        '[workspace]\nmembers = ["router"]\n\n[workspace.package]\nversion = "3.3.7"\nedition = "2021"\n'
        '\n[workspace.dependencies]\nbase64 = "0.22"\n'
    )
    assert latest.tgi_version(tmp_path) == "3.3.7 (Cargo.toml)"


def test_table_flags_a_pin_older_than_the_newest_release():
    rows = [
        {"runtime": "transformers", "ci": "5.24.0", "newest": "5.25.0", "result": "pass", "summary": "9 passed"},
        {"runtime": "exllamav2", "ci": "0.3.2", "newest": "0.3.2", "result": "pass", "summary": "3 passed"},
        {"runtime": "tgi", "ci": "not in CI", "newest": "?", "result": "skipped", "summary": "no checkout"},
    ]
    lines = latest.render(rows).splitlines()
    assert lines[2].startswith("| transformers | 5.25.0 | 5.24.0 (older: bump it) | pass |")
    assert lines[3].startswith("| exllamav2 | 0.3.2 | 0.3.2 | pass |")
    assert lines[4] == "| tgi | ? | not in CI | skipped | no checkout | - |"
