"""Write an evaluation's results: JSON (everything), CSV (one table each), PNG plots, a Markdown table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ropepatch.atomic import atomic_open, atomic_write

__all__ = ["markdown_tables", "row_label", "write_results"]


def row_label(row: dict[str, Any]) -> str:
    """A row's name in tables and legends: its label and, when known, the spec it measured."""
    applied = row.get("applied")
    return f"{row['method']}: {applied}" if applied else str(row["method"])


#: ``applied``: the spec the row measured (method, factor, original -> effective context)
PPL_COLUMNS = ["method", "applied", "length", "windows", "tokens", "nll", "ppl", "tail_tokens", "tail_nll", "tail_ppl"]
PASSKEY_COLUMNS = ["method", "applied", "length", "depth", "trials", "correct", "accuracy"]


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: list[str]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def write_results(
    results: dict[str, Any],
    out_dir: str | Path,
    *,
    original: int | None = None,
    title: str | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``results.json``, ``perplexity.csv`` (+ ``passkey.csv``) and, with matplotlib, the PNGs.

    Returns the written paths by kind. Without matplotlib the plots are skipped with a note in the
    returned mapping's ``"plots_skipped"`` entry (never an error: the numbers matter most).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["json"] = out / "results.json"
    atomic_write(written["json"], json.dumps(results, indent=2, default=_jsonable) + "\n")
    written["perplexity_csv"] = out / "perplexity.csv"
    _write_csv(written["perplexity_csv"], results.get("perplexity", []), PPL_COLUMNS)
    if results.get("passkey"):
        written["passkey_csv"] = out / "passkey.csv"
        _write_csv(written["passkey_csv"], results["passkey"], PASSKEY_COLUMNS)
    if plots:
        try:
            from ropepatch.evaluation.plotting import plot_passkey, plot_perplexity

            if results.get("perplexity"):
                written["perplexity_png"] = plot_perplexity(
                    results["perplexity"], out / "perplexity.png", original=original, title=title
                )
            if results.get("passkey"):
                written["passkey_png"] = plot_passkey(results["passkey"], out / "passkey.png", title=title)
        except ImportError as exc:
            atomic_write(out / "PLOTS_SKIPPED.txt", f"{exc}\n")
            written["plots_skipped"] = out / "PLOTS_SKIPPED.txt"
    return written


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def markdown_tables(results: dict[str, Any], *, key: str = "both") -> str:
    """Loss by method (rows) and length (columns) as Markdown: whole window and last quarter."""
    points = results.get("perplexity", [])
    methods = list(dict.fromkeys(p["method"] for p in points))
    names = {p["method"]: row_label(p) for p in points}
    lengths = sorted({p["length"] for p in points})
    by = {(p["method"], p["length"]): p for p in points}
    parts = []
    for field, name in (("nll", "whole window"), ("tail_nll", "last quarter")):
        if key not in ("both", field):
            continue
        lines = [
            f"Loss in nats/token ({name}):",
            "",
            "| method | " + " | ".join(str(n) for n in lengths) + " |",
            "|---|" + "---:|" * len(lengths),
        ]
        for m in methods:
            row = " | ".join(_fmt(by.get((m, n), {}).get(field)) for n in lengths)
            lines.append(f"| {names[m]} | {row} |")
        parts.append("\n".join(lines))
    keys = results.get("passkey", [])
    if keys:
        klens = sorted({r["length"] for r in keys})
        lines = [
            "Passkey retrieval accuracy (all depths):",
            "",
            "| method | " + " | ".join(str(n) for n in klens) + " |",
            "|---|" + "---:|" * len(klens),
        ]
        key_names = {r["method"]: row_label(r) for r in keys}
        for m in key_names:
            cells = []
            for n in klens:
                rows = [r for r in keys if r["method"] == m and r["length"] == n]
                trials = sum(r["trials"] for r in rows)
                cells.append(f"{sum(r['correct'] for r in rows) / trials:.0%}" if trials else "-")
            lines.append(f"| {key_names[m]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
