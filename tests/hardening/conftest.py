"""Hardening tests: print the fuzz counts at the end, and write FUZZ-REPORT.md when asked."""

from __future__ import annotations

import os
from pathlib import Path

import hardening_kit as kit
import pytest


@pytest.fixture(autouse=True)
def _no_rope_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a ROPEPATCH set in the developer's shell must not change what the fuzzers see
    monkeypatch.delenv("ROPEPATCH", raising=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not kit.STATS:
        return
    tr = terminalreporter
    tr.section(f"ropepatch fuzz counts (profile {kit.PROFILE})")
    tr.write_line(f"{'target':24} {'tried':>8} {'error':>8} {'spec':>8} {'other':>6}")
    for target in sorted(kit.STATS):
        c = kit.STATS[target]
        tr.write_line(f"{target:24} {c['tried']:>8} {c['error']:>8} {c['spec']:>8} {c['other']:>6}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("ROPEPATCH_FUZZ_REPORT") and kit.STATS:
        Path(kit.HERE / "FUZZ-REPORT.md").write_text(kit.report_markdown(), encoding="utf-8")
