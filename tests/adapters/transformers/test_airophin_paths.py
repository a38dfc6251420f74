"""An airophin-style checkpoint on disk loads as 3-way partial NTK through every way a user loads it.

The checkpoint is the shipped example's config.json (examples/checkpoints/airophin-pntk-16k: top-level
original_max_position_embeddings 4096, max 16384, no rope_scaling) with the model shrunk to one tiny
layer (head_dim kept at 128, which the frequencies depend on) and random weights. It is loaded with
``from_pretrained`` in-process, in a child of ``ropepatch run``, and by the README's own example code.
Reference: tests/data/reference/test-vectors.json ``ntk_by_parts_3way_s4`` (bloc97's formula), and the
plain-RoPE value transformers computes when nothing patches it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")

VECTORS = json.loads((ROOT / "tests" / "data" / "reference" / "test-vectors.json").read_text())
PNTK = next(c for c in VECTORS["cases"] if c["id"] == "ntk_by_parts_3way_s4")["expected"]
PLAIN_31 = 10000.0 ** (-62 / 128)  # what transformers computes on its own: plain RoPE, d=128

#: a child loads the checkpoint and prints what its rotary module holds
REPORT = """
import json, sys
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
rot = next(m for m in model.modules() if hasattr(m, "inv_freq"))
print(json.dumps({"rope_type": getattr(rot, "rope_type", None), "inv_freq": rot.inv_freq.tolist()}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((ROOT / "examples" / "checkpoints" / "airophin-pntk-16k" / "config.json").read_text())
    config.update(
        hidden_size=256, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1
    )
    config.update(vocab_size=128, torch_dtype="float32")
    folder = tmp_path_factory.mktemp("airophin-tiny")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "rope_scaling"})).save_pretrained(folder)
    # the checkpoint's own config.json, as published (save_pretrained would write transformers' reading of it)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def assert_part_ntk(found: dict[str, Any]) -> None:
    assert found["rope_type"] == "ropepatch_part_ntk"
    inv = found["inv_freq"]
    assert len(inv) == 64
    for key, value in PNTK.items():
        if key.startswith("inv_freq["):
            assert inv[int(key[len("inv_freq[") : -1])] == pytest.approx(value, rel=1e-6), key


def child(argv: list[str], folder: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=str(folder.parent))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_from_pretrained_in_process(checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM

    import ropepatch

    def rotary(model: Any) -> dict[str, Any]:
        rot = next(m for m in model.modules() if hasattr(m, "inv_freq"))
        return {"rope_type": rot.rope_type, "inv_freq": rot.inv_freq.tolist()}

    alone = rotary(AutoModelForCausalLM.from_pretrained(checkpoint))
    assert alone["rope_type"] == "default" and alone["inv_freq"][31] == pytest.approx(PLAIN_31, rel=1e-6)
    ropepatch.enable()
    assert_part_ntk(rotary(AutoModelForCausalLM.from_pretrained(checkpoint)))


def test_ropepatch_run_child(checkpoint: Path) -> None:
    found = child(
        [sys.executable, "-m", "ropepatch", "run", "--", sys.executable, "-c", REPORT, str(checkpoint)], checkpoint
    )
    assert_part_ntk(found)


def test_readme_example(checkpoint: Path) -> None:
    """The README's first Python block, verbatim but for the checkpoint path, then a load."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "ropepatch.enable()" in example and "path/to/checkpoint" in example
    code = example.replace("path/to/checkpoint", str(checkpoint)) + REPORT
    assert_part_ntk(child([sys.executable, "-c", code, str(checkpoint)], checkpoint))
