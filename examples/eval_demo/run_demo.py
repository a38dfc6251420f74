"""Reproduce docs/eval-demo.md: ``ropepatch eval`` the shipped tiny Llama to 16x its training length.

From the repository root::

    python examples/eval_demo/run_demo.py

evaluates the 0.8M-parameter byte-level Llama shipped in ``examples/eval_demo/model`` (trained at
context 128 on the Python standard library's source by ``train_tiny_llama.py``) with plain RoPE,
linear interpolation, NTK, dynamic NTK and YaRN on the shipped held-out text at 64..2048 tokens (a
few minutes on 2 free CPU cores), writes everything to ``./eval-demo-out`` and checks
the numbers against the committed ``docs/eval-demo-results.json``. Nothing is trained and nothing in
the repository changes unless asked:

* ``--passkey`` adds passkey retrieval (which this model of Python source never passes);
* ``--refresh-docs`` rewrites ``docs/eval-demo.md``, its plots, CSV and JSON from this run;
* ``--noise K`` also evaluates K more disjoint slices of the held-out text, to measure how much a
  cell moves with the choice of text (the spread the docs state);
* ``--retrain`` trains a fresh model into ``OUT/model`` first (minutes on 2 free cores, longer on a busy machine) and
  evaluates that one instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # the repository, when ropepatch is not installed

MODEL = HERE / "model"
HELD_OUT = HERE / "heldout.txt"
METHODS = "default,linear,ntk,dynamic,yarn"
LENGTHS = "64,128,256,512,1024,2048"
PASSKEY_LENGTHS = "256,512,1024"
TITLE = "0.8M-parameter Llama trained at 128 tokens (byte-level Python stdlib), no fine-tuning"
#: a rerun on the same model and text reproduces every cell to within this (in nats); in practice
#: the differences are float32 rounding, far below it
REPRODUCE_TOLERANCE = 0.01


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("eval-demo-out"), help="scratch folder (default ./eval-demo-out)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--refresh-docs", action="store_true", help="rewrite docs/eval-demo.* from this run")
    p.add_argument("--noise", type=int, default=0, metavar="K", help="also evaluate K other slices of the text")
    p.add_argument("--retrain", action="store_true", help="train a fresh model into OUT/model and evaluate it")
    p.add_argument("--passkey", action="store_true", help="also run passkey retrieval (no method passes it here)")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render-only", action="store_true", help="rewrite the docs from OUT's last results only")
    p.add_argument(
        "--window-noise", action="store_true", help="measure each cell's standard error over its windows (fast)"
    )
    args = p.parse_args(argv)
    if args.render_only:
        if args.window_noise:
            window_noise(MODEL, args)
        return write_docs(args)
    start = time.time()
    model = MODEL
    if args.retrain:
        model = args.out / "model"
        subprocess.run(
            [sys.executable, str(HERE / "train_tiny_llama.py"), "--out", str(model), "--threads", str(args.threads)],
            check=True,
        )
    import torch

    torch.set_num_threads(args.threads)
    rc = evaluate(model, HELD_OUT, args.out / "eval", args.windows, passkey=args.passkey)
    if rc:
        return rc
    wall = time.time() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpu = sum(os.times()[:2])  # this process's user + system time: what the demo costs on free cores
    record = {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_average": load,
        "cpus": os.cpu_count(),
    }
    (args.out / "eval" / "demo.json").write_text(json.dumps(record) + "\n")
    print(f"demo finished in {wall:.0f} s (load average {load}); results in {args.out / 'eval'}")
    if args.noise:
        measure_noise(model, args)
    if args.refresh_docs:
        return write_docs(args)
    if args.retrain:
        return 0
    return compare(json.loads((args.out / "eval" / "results.json").read_text()), args.docs)


def evaluate(model: Path, text: Path, out: Path, windows: int, *, passkey: bool, plots: bool = True) -> int:
    """``ropepatch eval`` of ``model`` on ``text`` into ``out`` (the command the docs show)."""
    from ropepatch.cli.main import main as ropepatch

    command = [
        "eval",
        str(model),
        "--byte-level",
        "--text",
        str(text),
        "--methods",
        METHODS,
        "--lengths",
        LENGTHS,
        "--windows",
        str(windows),
        "--out",
        str(out),
        "--no-progress",
        "--title",
        TITLE,
    ]
    if passkey:
        command += ["--passkey", "--passkey-lengths", PASSKEY_LENGTHS, "--trials", "4"]
    if not plots:
        command.append("--no-plots")
    return ropepatch(command)


def measure_noise(model: Path, args: argparse.Namespace) -> dict:
    """Evaluate K further disjoint slices of the held-out text; the spread of each cell across slices.

    Slice 0 is the part the main run reads (``windows`` windows of the longest length, back to back);
    slice k starts k slices further into the text, so no two slices share a byte.
    """
    data = HELD_OUT.read_bytes()
    size = args.windows * max(int(n) for n in LENGTHS.split(","))
    if (args.noise + 1) * size > len(data):
        raise SystemExit(f"--noise {args.noise}: the held-out text has room for {len(data) // size - 1} more slices")
    runs = [json.loads((args.out / "eval" / "results.json").read_text())]
    for k in range(1, args.noise + 1):
        folder = args.out / "noise" / f"slice{k}"
        folder.mkdir(parents=True, exist_ok=True)
        text = folder / "text.txt"
        text.write_bytes(data[k * size : (k + 1) * size].decode("utf-8", errors="ignore").encode("utf-8"))
        if evaluate(model, text, folder, args.windows, passkey=False, plots=False):
            raise SystemExit(f"the evaluation of noise slice {k} failed")
        runs.append(json.loads((folder / "results.json").read_text()))
    noise = spread(runs)
    (args.out / "eval" / "noise.json").write_text(json.dumps(noise, indent=1) + "\n")
    print(f"noise over {len(runs)} slices: {noise['summary']}")
    return noise


NOISE_METHODS = ("default", "yarn")
NOISE_LENGTHS = (128, 512, 2048)


def window_noise(model: Path, args: argparse.Namespace) -> dict:
    """The standard error of a cell's mean loss over its windows, for a few cells (the text's sampling noise).

    Scores each window on its own through the same path as ``ropepatch eval`` and divides the windows'
    standard deviation by the square root of their number.
    """
    import torch

    from ropepatch.evaluation.byte_tokens import ByteCodec
    from ropepatch.evaluation.perplexity import cut_windows, model_scorer, score_window
    from ropepatch.evaluation.runner import LocalModel
    from ropepatch.evaluation.variants import variants_for

    torch.set_num_threads(args.threads)
    ids = ByteCodec().encode(HELD_OUT.read_text(encoding="utf-8"))
    handle = LocalModel(str(model), device="cpu")
    original = 128
    rows = []
    for variant in variants_for(NOISE_METHODS, original=original, target=max(int(n) for n in LENGTHS.split(","))):
        score = model_scorer(handle.apply(variant))
        for length in NOISE_LENGTHS:
            windows = cut_windows(ids, length, max_windows=args.windows)
            scores = [score_window(score(w)) for w in windows]
            row = {"method": variant.label, "length": length}
            for key, per in (
                ("nll_std", [s.nll_sum / s.tokens for s in scores]),
                ("tail_nll_std", [s.tail_nll_sum / s.tail_tokens for s in scores]),
            ):
                row[key] = statistics.stdev(per) / math.sqrt(len(per))
            rows.append(row)
    noise = {"kind": "windows", "windows": args.windows, "cells": rows, "summary": _summary(rows)}
    (args.out / "eval" / "noise.json").write_text(json.dumps(noise, indent=1) + "\n")
    print(f"standard error of a cell over its windows: {noise['summary']}")
    return noise


def _summary(rows: list[dict]) -> dict:
    summary = {}
    for key in ("nll_std", "tail_nll_std"):
        values = sorted(r[key] for r in rows if key in r)
        summary[key] = {"median": round(statistics.median(values), 4), "max": round(values[-1], 4)}
    return summary


def spread(runs: list[dict]) -> dict:
    """Per (method, length) standard deviation across runs, and a one-line summary of it."""
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in runs:
        for point in run["perplexity"]:
            cell = cells.setdefault((point["method"], point["length"]), {"nll": [], "tail_nll": []})
            for key in ("nll", "tail_nll"):
                if point[key] is not None:
                    cell[key].append(point[key])
    rows = [
        {"method": m, "length": n, **{f"{k}_std": statistics.stdev(v) for k, v in c.items() if len(v) > 1}}
        for (m, n), c in cells.items()
    ]
    return {"kind": "slices", "slices": len(runs), "cells": rows, "summary": _summary(rows)}


def compare(results: dict, docs: Path) -> int:
    """Check this run against the committed table: every cell within :data:`REPRODUCE_TOLERANCE`."""
    committed = json.loads((docs / "eval-demo-results.json").read_text())
    before = {(p["method"], p["length"]): p for p in committed["perplexity"]}
    worst, where = 0.0, None
    for point in results["perplexity"]:
        old = before.get((point["method"], point["length"]))
        for key in ("nll", "tail_nll"):
            if old is None or old[key] is None or point[key] is None:
                continue
            diff = abs(point[key] - old[key])
            if not math.isfinite(diff) or diff > worst:
                worst, where = diff, f"{point['method']} at {point['length']} ({key})"
    if worst <= REPRODUCE_TOLERANCE:
        print(
            f"reproduces docs/eval-demo.md: every cell within {worst:.1e} nats of the committed table "
            f"(tolerance {REPRODUCE_TOLERANCE})"
        )
        return 0
    print(
        f"WARNING: differs from docs/eval-demo.md by {worst:.3f} nats at {where} (tolerance {REPRODUCE_TOLERANCE}); "
        "--refresh-docs rewrites the docs from this run"
    )
    return 1


def write_docs(args: argparse.Namespace) -> int:
    """docs/eval-demo.md, its plots, CSV and JSON from the last evaluation's results in ``args.out``."""
    results = json.loads((args.out / "eval" / "results.json").read_text())
    training = json.loads((Path(results["model"]) / "training.json").read_text())
    noise_file = args.out / "eval" / "noise.json"
    committed = args.docs / "eval-demo-results.json"
    if noise_file.exists():
        noise = json.loads(noise_file.read_text())
    else:  # keep the spread measured last time (--noise is slow and the model did not change)
        noise = json.loads(committed.read_text()).get("noise") if committed.exists() else None
    run_file = args.out / "eval" / "demo.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    args.docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.out / "eval" / "perplexity.png", args.docs / "eval-demo.png")
    passkey_png = args.out / "eval" / "passkey.png"
    if passkey_png.exists():
        shutil.copyfile(passkey_png, args.docs / "eval-demo-passkey.png")
    else:  # never leave a plot of another run beside these numbers
        (args.docs / "eval-demo-passkey.png").unlink(missing_ok=True)
    shutil.copyfile(args.out / "eval" / "perplexity.csv", args.docs / "eval-demo.csv")
    (args.docs / "eval-demo.md").write_text(render(results, training, noise, run))
    public = dict(
        results,
        model=_relative(results["model"]),
        text=dict(results["text"], source=_relative(results["text"]["source"])),
        noise=noise,
    )
    (args.docs / "eval-demo-results.json").write_text(json.dumps(public, indent=1) + "\n")
    print(f"wrote {args.docs / 'eval-demo.md'}")
    return 0


def _relative(path: str) -> str:
    """A path relative to the repository when it lies inside it (no machine's paths in the docs)."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path


def _at(results: dict, method: str, length: int, key: str) -> float | None:
    for p in results["perplexity"]:
        if p["method"] == method and p["length"] == length:
            return p[key]
    return None


def findings(results: dict, original: int) -> list[str]:
    """Plain statements read off the numbers (the doc is regenerated; no hand-written claims)."""
    lengths = sorted({p["length"] for p in results["perplexity"]})
    longer = [n for n in lengths if n > original]
    out = []
    base = _at(results, "default", original, "tail_nll")
    for method in dict.fromkeys(p["method"] for p in results["perplexity"]):
        at0 = _at(results, method, original, "tail_nll")
        parts = ", ".join(
            f"{_at(results, method, n, 'tail_nll'):.2f} at {n // original}x"
            for n in longer
            if _at(results, method, n, "tail_nll") is not None
        )
        out.append(
            f"**{method}**: last-quarter loss {at0:.2f} nats at the training length (plain RoPE: {base:.2f}); {parts}."
        )
    best = {}
    for n in longer:
        rows = [
            (p["tail_nll"], p["method"])
            for p in results["perplexity"]
            if p["length"] == n and p["tail_nll"] is not None
        ]
        best[n] = min(rows)[1] if rows else None
    out.append(
        "Lowest last-quarter loss by length: " + ", ".join(f"{n // original}x {m}" for n, m in best.items()) + "."
    )
    return out


def _passkey_note(results: dict) -> str:
    keys = results.get("passkey", [])
    if keys and not any(r["correct"] for r in keys):
        return (
            " (no method retrieved any key at any length or depth: with byte tokens the shortest passkey "
            "prompt is already past the training context, and a 0.8M-parameter model of Python source has not "
            "learned this task; the heatmap only shows the tool at work)."
        )
    return "."


def _noise_line(noise: dict | None) -> str:
    if not noise:
        return ""
    whole, tail = noise["summary"]["nll_std"], noise["summary"]["tail_nll_std"]
    if noise.get("kind") == "windows":
        cells = ", ".join(f"{c['method']} at {c['length']}" for c in noise["cells"])
        return (
            f" How much a cell depends on the text: the standard error of a cell's mean over its {noise['windows']} "
            f"windows (`run_demo.py --render-only --window-noise`, measured for {cells}) is {whole['median']:.3f} "
            f"nats at the median and at most {whole['max']:.3f} (whole window), {tail['median']:.3f} and "
            f"{tail['max']:.3f} (last quarter); differences between methods smaller than about twice that are "
            "not findings."
        )
    return (
        f" How much a cell depends on the text: over {noise['slices']} disjoint slices of the held-out text "
        f"(`run_demo.py --noise {noise['slices'] - 1}`), a cell's standard deviation is {whole['median']:.3f} nats "
        f"at the median and at most {whole['max']:.3f} (whole window), {tail['median']:.3f} and {tail['max']:.3f} "
        "(last quarter); differences between methods smaller than that are not findings."
    )


def _demo_time(run: dict) -> str:
    if not run.get("wall_seconds"):
        return ""
    load = (
        f" with a load average of {run['load_average']:.1f} on its {run['cpus']} cores"
        if run.get("load_average")
        else ""
    )
    cpu = (
        f" ({run['cpu_seconds'] / 60:.1f} CPU-minutes: about half that on 2 free cores)"
        if run.get("cpu_seconds")
        else ""
    )
    return f" The run that wrote this file took {run['wall_seconds'] / 60:.1f} minutes on a machine{load}{cpu}."


def render(results: dict, training: dict, noise: dict | None, run: dict) -> str:
    """The Markdown of docs/eval-demo.md (every number read from the results, no hand-written claims)."""
    from ropepatch.evaluation.report import markdown_tables

    original = results["original_context"]
    variants = "\n".join(f"| {v['label']} | `{v['overrides']}` | {v['spec']} |" for v in results["variants"])
    import torch
    import transformers

    lines = [
        "# Demo: RoPE scaling methods on a tiny Llama, past its training length",
        "",
        "A 0.8M-parameter Llama (transformers' own architecture, plain RoPE) trained at a "
        f"{original}-token context, then evaluated up to {max(results['lengths']) // original}x that "
        "context with each scaling method applied by ropepatch's transformers adapter, without any "
        "fine-tuning. The trained model and its held-out text ship in `examples/eval_demo/`, so the demo "
        "only evaluates: minutes on a CPU, nothing from the network." + _demo_time(run),
        "",
        "Reproduce (from the repository root, with `pip install '.[transformers,eval]'`):",
        "",
        "```",
        "python examples/eval_demo/run_demo.py",
        "```",
        "",
        "which writes to `./eval-demo-out` (`--out` to change), checks every number against this page "
        f"(within {REPRODUCE_TOLERANCE} nats) and runs:",
        "",
        "```",
        f"ropepatch eval examples/eval_demo/model --byte-level --text examples/eval_demo/heldout.txt \\\n"
        f"    --methods {METHODS} --lengths {LENGTHS} --windows {results['windows']} \\\n"
        f'    --out eval-demo-out/eval --title "{TITLE}"',
        "```",
        "",
        "`--refresh-docs` rewrites this page from the run; `--retrain` trains a new model first "
        "(`examples/eval_demo/train_tiny_llama.py`); `--noise K` measures the noise below.",
        "",
        "![loss by context length](eval-demo.png)",
        "",
        "## Setup",
        "",
        f"* **Data**: byte-level tokens (id = byte) of the Python {training['python']} standard library's `.py` "
        "files; a tenth of the files, chosen by a hash of their path, is held out, and the first "
        f"{results['text']['tokens']:,} bytes of them are the evaluation text `examples/eval_demo/heldout.txt` "
        f"(origin and licence: `examples/eval_demo/DATA.md`). {training['train_files']} files "
        f"({training['train_bytes'] / 1e6:.1f}M bytes) for training.",
        f"* **Model**: `LlamaForCausalLM`, hidden 128, 4 layers, 4 heads of 32, tied embeddings, vocabulary 256, "
        f"{training['parameters'] / 1e6:.2f}M parameters, `max_position_embeddings` {original}, rope_theta 10000 "
        "(`examples/eval_demo/model`, float32 safetensors).",
        f"* **Training** (once, shipped): {training['steps']} steps of AdamW (lr {training['lr']}, cosine decay to "
        f"10%, batch {training['batch']} x {training['context']} tokens, seed {training['seed']}), "
        f"{training['seconds'] / 60:.1f} minutes on a CPU shared with other jobs (torch {training['torch']}); "
        f"final training loss {training['log'][-1]['loss']:.2f} nats.",
        f"* **Evaluation**: {results['windows']} windows per length, back to back from the start of the text, "
        "each scored on its own; loss over the whole window and over its last quarter (the positions furthest "
        "out, where a failing method shows; whole-window averages include the early positions that sit inside "
        f"the trained range). {results['seconds']:.0f} s of evaluation (transformers {transformers.__version__}, "
        f"torch {torch.__version__}, {platform.machine()}).",
        f"* **Methods** (factor = longest length / {original}; dynamic NTK's factor is 2, as transformers documents):",
        "",
        "| label | ropepatch overrides | resolved spec |",
        "|---|---|---|",
        variants,
        "",
        "## Results",
        "",
        markdown_tables(results),
        "",
        f"**Noise.** A rerun on the same model and text reproduces every cell to within {REPRODUCE_TOLERANCE} nats "
        "(float32 rounding; `run_demo.py` checks it)." + _noise_line(noise),
        "",
        "The same numbers with token counts and perplexities: [eval-demo.csv](eval-demo.csv). "
        + (
            f"Passkey retrieval by depth: [eval-demo-passkey.png](eval-demo-passkey.png){_passkey_note(results)}"
            if results.get("passkey")
            else "`--passkey` adds passkey retrieval (`--passkey-lengths "
            f"{PASSKEY_LENGTHS} --trials 4`): with byte tokens the shortest passkey prompt is already past the "
            "training context, and a 0.8M-parameter model of Python source never retrieves a key."
        ),
        "",
        "## What the numbers say",
        "",
        *[f"* {line}" for line in findings(results, original)],
        "",
        "Every variant's rotary buffers were read back after patching and compared with ropepatch's spec: "
        + (
            "all matched."
            if all(v.get("ok") for v in results["variants"])
            else "SOME DID NOT MATCH (see results.json)."
        ),
        "",
        "*This file is generated by `examples/eval_demo/run_demo.py --refresh-docs`; edit the script, not the file.*",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
