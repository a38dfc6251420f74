"""PNG plots of an evaluation (matplotlib, from the ``eval`` extra; imported only when plotting)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ropepatch.atomic import atomic_open

__all__ = ["plot_passkey", "plot_perplexity"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'ropepatch[eval]'") from exc
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_perplexity(
    points: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    original: int | None = None,
    title: str | None = None,
) -> Path:
    """Loss (nats/token) against context length, one line per method; whole window and last quarter.

    ``points`` are :meth:`PerplexityPoint.to_dict` rows. ``original`` draws the training context.
    """
    from ropepatch.evaluation.report import row_label

    plt = _pyplot()
    methods = list(dict.fromkeys(p["method"] for p in points))
    names = {p["method"]: row_label(p) for p in points}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, name in ((axes[0], "nll", "whole window"), (axes[1], "tail_nll", "last quarter of the window")):
        for method in methods:
            rows = sorted(
                (p for p in points if p["method"] == method and p.get(key) is not None), key=lambda p: p["length"]
            )
            if rows:
                ax.plot([r["length"] for r in rows], [r[key] for r in rows], marker="o", label=names[method])
        if original:
            ax.axvline(original, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                "training context",
                (original, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.set_xscale("log", base=2)
        lengths = sorted({p["length"] for p in points})
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("context length (tokens)")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("loss (nats / token)")
    _clip_y(axes[0], points)
    handles, labels = axes[0].get_legend_handles_labels()
    # one column per entry while they are short; the spec labels are long, so at most 3 a row
    ncol = min(len(labels), 3 if any(": " in label for label in labels) else 8)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    legend_rows = math.ceil(len(labels) / max(ncol, 1))
    fig.tight_layout(rect=(0, 0.03 + 0.045 * legend_rows, 1, 1))
    out = Path(path)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def _clip_y(ax: Any, points: Sequence[dict[str, Any]]) -> None:
    # a method that blows up should not flatten every other line: cap the axis at a few times the best loss
    values = [p[k] for p in points for k in ("nll", "tail_nll") if p.get(k) is not None and math.isfinite(p[k])]
    if not values:
        return
    low = min(values)
    high = max(values)
    cap = max(low * 4, low + 4)
    if high > cap:
        ax.set_ylim(bottom=max(0.0, low * 0.9), top=cap)


def plot_passkey(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Passkey accuracy heatmaps (depth x length), one panel per method."""
    from ropepatch.evaluation.report import row_label

    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = {r["method"]: row_label(r) for r in rows}
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    n = max(1, len(methods))
    fig, axes = plt.subplots(1, n, figsize=(2.4 + 2.0 * n, 3.4), squeeze=False, sharey=True, constrained_layout=True)
    image = None
    for ax, method in zip(axes[0], methods, strict=False):
        grid = [[math.nan] * len(lengths) for _ in depths]
        for r in rows:
            if r["method"] == method:
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="upper")
        ax.set_title(names[method].replace(": ", "\n", 1), fontsize=8)
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels([str(v) for v in lengths], rotation=45, fontsize=7)
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_xlabel("length", fontsize=8)
    axes[0][0].set_ylabel("key depth", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
