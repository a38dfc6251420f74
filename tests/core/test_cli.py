"""The ``ropepatch`` command line, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ropepatch.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_text_shows_method_provenance_context(capsys, checkpoints_dir):
    code, out, _ = run(capsys, "inspect", str(checkpoints_dir / "bhenrym14__airophin-13b-pntk-16k-fp16.json"))
    assert code == 0
    assert "part-ntk" in out and "4096 original -> 16384 effective" in out
    assert "max_position_embeddings // " in out  # where the factor came from


def test_inspect_json_document(capsys, checkpoints_dir):
    code, out, _ = run(capsys, "inspect", str(checkpoints_dir / "NousResearch__Yarn-Llama-2-13b-128k.json"), "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == {"method", "params", "provenance", "warnings"}
    assert doc["method"] == "yarn" and doc["params"]["factor"] == 32.0
    assert doc["params"]["attention_factor"] == pytest.approx(0.1 * __import__("math").log(32) + 1, rel=1e-12)


def test_inspect_seq_len_for_dynamic(capsys, checkpoints_dir):
    path = str(checkpoints_dir / "microsoft__Phi-3.5-mini-instruct.json")
    _, short, _ = run(capsys, "inspect", path, "--json", "--seq-len", "100")
    _, long, _ = run(capsys, "inspect", path, "--json", "--seq-len", "5000")
    s, lo = json.loads(short)["params"], json.loads(long)["params"]
    assert s["inv_freq_first"] == pytest.approx(1.0) and lo["inv_freq_first"] == pytest.approx(1 / 1.08, rel=1e-6)


def test_inspect_overrides_and_bad_input(capsys, checkpoints_dir):
    code, out, _ = run(
        capsys,
        "inspect",
        str(checkpoints_dir / "Qwen__Qwen2.5-7B-Instruct.json"),
        "--json",
        "--target-context",
        "131072",
    )
    assert code == 0 and json.loads(out)["params"]["factor"] == 4.0
    code, _, err = run(capsys, "inspect", str(checkpoints_dir / "Qwen__Qwen2.5-7B-Instruct.json"), "--method", "yran")
    assert code == 2 and "did you mean 'yarn'" in err and "Traceback" not in err


def test_as_llama_cpp(capsys, checkpoints_dir):
    code, out, _ = run(
        capsys, "inspect", str(checkpoints_dir / "NousResearch__Yarn-Llama-2-13b-128k.json"), "--as", "llama.cpp"
    )
    assert code == 0
    assert "--rope-scaling yarn --rope-scale 32 --yarn-orig-ctx 4096" in out
    code, out, _ = run(capsys, "inspect", str(checkpoints_dir / "amazon__FalconLite.json"), "--as", "llama.cpp")
    assert code == 1 and "no llama.cpp equivalent" in out
    code, out, _ = run(
        capsys,
        "inspect",
        str(checkpoints_dir / "bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192.json"),
        "--as",
        "llama.cpp",
    )
    assert "--rope-scaling linear --rope-scale 4" in out


def test_methods_table_has_every_method_with_a_formula(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    assert {
        "default",
        "linear",
        "ntk",
        "dynamic",
        "ntk-by-parts",
        "part-ntk",
        "yarn",
        "dynamic-yarn",
        "ntk-margin",
        "ntk-yarn",
        "llama3",
        "longrope",
        "qwen-dynamic-ntk",
    } <= names
    assert all(r["formula"] for r in rows)


def test_plugins_listing(capsys):
    code, out, _ = run(capsys, "plugins", "--all", "--json")
    doc = json.loads(out)
    assert code == 0 and any(p["name"] == "ropepatch.methods.yarn" for p in doc["plugins"])


def test_console_script_and_import_cost():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import sys, ropepatch; "
        "heavy = [m for m in ('torch', 'transformers', 'pluggy', 'exllamav2', 'vllm') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
