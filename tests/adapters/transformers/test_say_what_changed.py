"""Say what changed: one stderr line per model whose RoPE ropepatch changed, none for a model left alone.

Each case is a plain script with default settings (no logging configured) in a fresh interpreter,
building tiny transformers models from configs: an airophin-style checkpoint (top-level original
context 4096, max 16384: part-NTK x4) and a plain Llama config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

SCRIPT = """
import ropepatch
from tf_tiny import make_config, make_model

ropepatch.enable({enable_args})
{before}
airophin = make_config("llama", head_dim=128, max_position_embeddings=16384, original_max_position_embeddings=4096)
airophin._name_or_path = "bhenrym14/airophin-13b-pntk-16k-fp16"
plain = make_config("llama", head_dim=128, max_position_embeddings=4096)
plain._name_or_path = "meta-llama/Llama-2-7b-hf"
for config in {configs}:
    make_model(config)
    make_model(config)  # a second load of the same model in the same process: no second line
import json
print(json.dumps(ropepatch.report()))
"""


def _run(configs: str, enable_args: str = "", before: str = "", **env: str) -> tuple[list[str], dict]:
    import json

    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    environ.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), OMP_NUM_THREADS="1", **env)
    environ["TRANSFORMERS_VERBOSITY"] = "error"
    code = SCRIPT.format(configs=configs, enable_args=enable_args, before=before)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ropepatch" in line]
    return lines, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_line_for_a_corrected_model_none_for_a_plain_one() -> None:
    lines, report = _run("[airophin, plain]")
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("ropepatch: bhenrym14/airophin-13b-pntk-16k-fp16 (transformers): RoPE part-ntk x4")
    assert "context 4096 -> 16384" in line and "alone would use plain RoPE" in line
    assert "original_max_position_embeddings" in line  # where the method came from: the metadata key
    # the same facts from the public call, plus each adapter's state
    (model,) = report["models"]
    assert model["model"] == "bhenrym14/airophin-13b-pntk-16k-fp16" and model["applied"]["method"] == "part-ntk"
    assert model["applied"]["factor"] == 4.0 and model["applied"]["effective_context"] == 16384
    assert report["adapters"]["transformers"]["state"] == "installed"
    assert report["adapters"]["vllm"]["state"] in ("skipped", "waiting")


@pytest.mark.slow
def test_an_override_is_named_as_the_source() -> None:
    lines, _ = _run("[plain]", enable_args="method='yarn', factor=2.0")
    assert len(lines) == 1 and "RoPE yarn x2" in lines[0] and "[from explicit]" in lines[0], lines


@pytest.mark.slow
def test_nothing_for_a_plain_model() -> None:
    lines, report = _run("[plain]")
    assert lines == [] and report["models"] == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        {"env": {"ROPEPATCH_QUIET": "1"}},
        {"enable_args": "quiet=True"},
        {"before": "import logging; logging.getLogger('ropepatch').setLevel(logging.WARNING)"},
    ],
    ids=["ROPEPATCH_QUIET", "enable-quiet", "logger-level"],
)
def test_quiet_switches(how: dict) -> None:
    lines, report = _run(
        "[airophin]", enable_args=how.get("enable_args", ""), before=how.get("before", ""), **how.get("env", {})
    )
    assert lines == [] and len(report["models"]) == 1  # not said, still recorded


@pytest.mark.slow
def test_a_configured_logging_setup_decides() -> None:
    before = "import logging; logging.basicConfig(level=logging.INFO, format='LOGGED %(name)s %(message)s')"
    lines, _ = _run("[airophin]", before=before)
    said = [line for line in lines if "part-ntk" in line]
    assert len(said) == 1 and said[0].startswith("LOGGED ropepatch.changes ropepatch: bhenrym14/"), lines
