"""``ropepatch doctor``'s exit status: 0 all match with ropepatch, 1 a runtime with ropepatch does not,
2 usage/input error, 3 (``--fail-on-native``) a runtime on its own is wrong.

On real configs from the checkpoint corpus (tests/data/checkpoints), with the real transformers probe;
the mismatching cases are forced the two ways a user meets them: the adapter does not patch the
installed runtime (as when a release is newer than an adapter's range), and a runtime that computes
its own RoPE whatever ropepatch says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doctor_paths import NATIVE_LEGACY_SU

import ropepatch
from ropepatch.cli.main import main
from ropepatch.doctor.diagnose import mismatches
from ropepatch.doctor.probe import Computation, register_probe
from ropepatch.registry import get_registry

REPO = Path(__file__).resolve().parents[2]
ADAPTER = get_registry().adapters.get("transformers")
needs_adapter = pytest.mark.skipif(
    ADAPTER is None or ADAPTER.problem() is not None,
    reason="needs ropepatch's transformers adapter patching the installed transformers",
)

# (corpus file, exit status, exit status with --fail-on-native): transformers is the runtime installed here
CASES = [
    ("bhenrym14__airophin-13b-pntk-16k-fp16", 0, 3),  # plain RoPE alone, part-NTK with ropepatch
    ("microsoft__Phi-3-vision-128k-instruct", 0, 0 if NATIVE_LEGACY_SU else 3),  # 'su' fails alone before 5.25
    ("bhenrym14__airoboros-33b-gpt4-1.4.1-PI-8192", 0, 3),  # PI only in the name
    ("meta-llama__Llama-3.1-8B-Instruct", 0, 0),  # right on its own
    ("NousResearch__Yarn-Llama-2-13b-128k", 0, 0),
    ("Qwen__Qwen-7B-Chat", 0, 0),  # remote code: no native class, never a failure
]


def doctor(capsys, *argv: str) -> tuple[int, dict]:
    status = main(["doctor", *argv, "--json", "--no-env"])
    return status, json.loads(capsys.readouterr().out)


@needs_adapter
@pytest.mark.parametrize("name,plain,strict", CASES, ids=[c[0] for c in CASES])
def test_corpus_exit_status(corpus, capsys, name, plain, strict):
    path = str(corpus / f"{name}.json")
    status, report = doctor(capsys, path)
    assert status == plain == report["exit_status"]
    (tf,) = [r for r in report["runtimes"] if r["runtime"] == "transformers"]
    assert tf["with_ropepatch"]["verdict"] in ("matches", "unsupported")
    status, report = doctor(capsys, path, "--fail-on-native")
    assert status == strict
    assert ("transformers" in report["mismatches"]["native"]) == (strict == 3)


def test_adapter_not_patching_a_runtime_that_is_wrong_alone_exits_1(corpus, capsys, monkeypatch):
    """The silently inert case: transformers loads airophin as plain RoPE and nothing patches it."""
    if ADAPTER is None:
        pytest.skip("ropepatch's transformers adapter is not registered")
    monkeypatch.setattr(ADAPTER, "problem", lambda: "transformers 99.0 is outside the tested range (forced)")
    status, report = doctor(capsys, str(corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json"))
    (tf,) = [r for r in report["runtimes"] if r["runtime"] == "transformers"]
    assert tf["native"]["verdict"] == "wrong" and tf["with_ropepatch"]["verdict"] == "no-adapter"
    assert status == 1 and report["mismatches"]["with_ropepatch"] == ["transformers"]
    # the text report ends with the verdict that names the runtime
    assert main(["doctor", str(corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json"), "--no-env"]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == (
        "result    with ropepatch, transformers does not match the reference (exit 1)"
    )
    # a checkpoint transformers already gets right needs no adapter: still 0
    status, _ = doctor(capsys, str(corpus / "meta-llama__Llama-3.1-8B-Instruct.json"), "--fail-on-native")
    assert status == 0


class StubbornProbe:
    """A runtime (test plugin) with a ropepatch adapter that computes plain RoPE whatever it is told."""

    name = "stubborn"
    distribution = "pytest"
    adapter = "transformers"

    def problem(self):
        return None

    def version(self):
        return "1"

    def compute(self, config, seq_len, *, patched):
        d = config["hidden_size"] // config["num_attention_heads"]
        theta = config.get("rope_theta", 10000.0)
        return Computation("ok", inv_freq=[theta ** (-2 * i / d) for i in range(d // 2)], attention_factor=1.0)


@needs_adapter
def test_a_runtime_wrong_with_ropepatch_exits_1(corpus, capsys):
    probe = StubbornProbe()
    register_probe(probe)
    try:
        status, report = doctor(capsys, str(corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json"))
        entry = next(r for r in report["runtimes"] if r["runtime"] == "stubborn")
        # plain RoPE against 3-way partial NTK x4: the lowest frequency is off by a factor of 4
        assert entry["with_ropepatch"]["verdict"] == "wrong"
        assert entry["with_ropepatch"]["inv_freq_max_rel_diff"] == pytest.approx(3.0, rel=1e-6)
        assert status == 1 and report["mismatches"]["with_ropepatch"] == ["stubborn"]
        # plain RoPE is right for plain Llama 2: the same runtime passes there
        status, _ = doctor(capsys, str(corpus / "meta-llama__Llama-2-7b-hf.json"), "--fail-on-native")
        assert status == 0
    finally:
        from ropepatch.doctor import probe as probe_module

        probe_module._extra.remove(probe)


def test_usage_errors_exit_2(corpus, tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    # the CLI's parser reports a mistyped option itself (exit 2, the closest option suggested)
    assert main(["doctor", str(corpus / "meta-llama__Llama-2-7b-hf.json"), "--fail-on-natives"]) == 2
    assert "--fail-on-native" in capsys.readouterr().err
    with ropepatch.temporarily_enabled():
        assert main(["doctor", str(corpus / "meta-llama__Llama-2-7b-hf.json")]) == 2
    assert "already enabled" in capsys.readouterr().err


def test_help_documents_the_codes(capsys):
    assert main(["doctor", "--help"]) == 0
    text = capsys.readouterr().out
    for line in ("0  every installed runtime", "1  an installed runtime", "2  usage", "3  with --fail-on-native"):
        assert line in text


def test_mismatches_rules():
    def entry(native, patched):
        return {"runtime": f"{native}/{patched}", "native": {"verdict": native}, "with_ropepatch": {"verdict": patched}}

    report = {
        "runtimes": [
            entry("wrong", "matches"),
            entry("fails", "no-adapter"),
            entry("matches", "no-adapter"),
            entry("unsupported", "unsupported"),
            entry("matches", "unsupported"),
            entry("matches", "fails"),
            {"runtime": "absent", "verdict": "not-installed"},
        ]
    }
    assert mismatches(report) == {
        "with_ropepatch": ["fails/no-adapter", "matches/unsupported", "matches/fails"],
        "native": ["wrong/matches", "fails/no-adapter"],
    }


@needs_adapter
def test_console_script_exit_status(corpus):
    """The status reaches the shell: a real process, as CI runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    path = str(corpus / "bhenrym14__airophin-13b-pntk-16k-fp16.json")
    codes = [
        subprocess.run(
            [sys.executable, "-m", "ropepatch", "doctor", path, *flags], env=env, capture_output=True, timeout=300
        ).returncode
        for flags in ([], ["--fail-on-native"])
    ]
    assert codes == [0, 3]
