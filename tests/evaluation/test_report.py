"""Results files: JSON, CSV, Markdown tables and PNG plots (or a note when matplotlib is missing)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ropepatch.evaluation.report import markdown_tables, write_results


def results():
    ppl = []
    for method, base in (("default", 1.3), ("yarn", 1.35)):
        for length, grow in ((128, 0.0), (256, 0.8), (512, 2.0)):
            nll = base + (grow if method == "default" else grow / 10)
            ppl.append(
                {
                    "method": method,
                    "length": length,
                    "windows": 2,
                    "tokens": 2 * (length - 1),
                    "nll": nll,
                    "ppl": math.exp(nll),
                    "tail_tokens": length // 2,
                    "tail_nll": nll + 0.1,
                    "tail_ppl": math.exp(nll + 0.1),
                }
            )
    keys = [
        {"method": m, "length": n, "depth": d, "trials": 2, "correct": c, "accuracy": c / 2}
        for m, c in (("default", 0), ("yarn", 2))
        for n in (256, 512)
        for d in (0.0, 1.0)
    ]
    return {"perplexity": ppl, "passkey": keys, "variants": []}


def test_files_and_tables(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (the eval extra)")
    written = write_results(results(), tmp_path, original=128, title="t")
    assert set(written) == {"json", "perplexity_csv", "passkey_csv", "perplexity_png", "passkey_png"}
    for kind in ("perplexity_png", "passkey_png"):
        assert written[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[kind].stat().st_size > 5000
    assert json.loads(written["json"].read_text())["perplexity"][0]["method"] == "default"
    rows = list(csv.DictReader(written["perplexity_csv"].open()))
    assert rows[2]["length"] == "512" and float(rows[2]["nll"]) == pytest.approx(3.3)
    table = markdown_tables(results())
    assert "| default | 1.300 | 2.100 | 3.300 |" in table
    assert "| yarn | 1.450 | 1.530 | 1.650 |" in table  # the last-quarter table
    assert "| default | 0% | 0% |" in table and "| yarn | 100% | 100% |" in table


def test_no_plots_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    written = write_results(results(), tmp_path)
    assert "perplexity_png" not in written
    assert "pip install 'ropepatch[eval]'" in written["plots_skipped"].read_text()
    assert written["perplexity_csv"].exists()
