"""``ropepatch fix``: a corrected copy that llama.cpp / transformers read natively; tensors untouched."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class Result:
    returncode: int
    stderr: str


def cli(*args: str) -> Result:
    """The CLI in-process (the subprocess path is covered by the run and no-torch tests)."""
    from ropepatch.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return Result(code, err.getvalue())


def fields_and_tensors(path: Path) -> tuple[dict, dict]:
    import gguf

    r = gguf.GGUFReader(str(path), "r")
    fields = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type, tuple(t.shape), np.asarray(t.data).tobytes()) for t in r.tensors}
    return fields, tensors


def test_gguf_round_trip_detect_and_bytes(plain_gguf: Path, tmp_path: Path) -> None:
    from ropepatch import detect

    out = tmp_path / "fixed.gguf"
    r = cli("fix", str(plain_gguf), "--out", str(out), "--method", "yarn", "--factor", "4", "--original", "64")
    assert r.returncode == 0, r.stderr
    spec = detect(out, use_env=False)
    assert (spec.method, spec.effective_factor, spec.effective_original) == ("yarn", 4.0, 64)
    assert spec.provenance["method"].endswith("llama.rope.scaling.type")  # read from the file, not an override
    assert math.isclose(spec.attention_factor(), 0.1 * math.log(4) + 1, rel_tol=1e-12)

    before, tensors_before = fields_and_tensors(plain_gguf)
    after, tensors_after = fields_and_tensors(out)
    assert tensors_after == tensors_before  # every tensor: same type, shape and bytes
    added = {k: v for k, v in after.items() if k not in before}
    assert added == pytest.approx(
        {
            "llama.rope.scaling.type": "yarn",
            "llama.rope.scaling.factor": 4.0,
            "llama.rope.scaling.original_context_length": 64,
        }
    )
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else changed
    assert detect(plain_gguf, use_env=False).method == "default"  # the source is untouched


def test_gguf_refuses_inexpressible_and_writes_nothing(plain_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    r = cli("fix", str(plain_gguf), "--out", str(out), "--method", "dynamic", "--factor", "4", "--original", "64")
    assert r.returncode == 2 and not out.exists()
    assert "cannot run RoPE method 'dynamic'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".x.gguf.*"))  # no temporary left behind


def test_gguf_never_in_place_unless_asked(plain_gguf: Path, tmp_path: Path) -> None:
    import shutil

    from ropepatch import detect

    copy = tmp_path / "copy.gguf"
    shutil.copy(plain_gguf, copy)
    r = cli("fix", str(copy), "--method", "linear", "--factor", "2")
    assert r.returncode == 2 and "--in-place" in r.stderr
    r = cli("fix", str(copy), "--out", str(copy), "--method", "linear", "--factor", "2")
    assert r.returncode == 2
    assert detect(copy, use_env=False).method == "default"
    r = cli("fix", str(copy), "--in-place", "--method", "linear", "--factor", "2")
    assert r.returncode == 0, r.stderr
    spec = detect(copy, use_env=False)
    assert (spec.method, spec.effective_factor) == ("linear", 2.0)
    assert fields_and_tensors(copy)[1] == fields_and_tensors(plain_gguf)[1]


def test_gguf_ntk_is_a_new_base(plain_gguf: Path, tmp_path: Path) -> None:
    from ropepatch import detect

    out = tmp_path / "ntk.gguf"
    assert cli("fix", str(plain_gguf), "--out", str(out), "--method", "ntk", "--alpha", "4").returncode == 0
    spec = detect(out, use_env=False)
    assert spec.method == "default"
    assert spec.rope_theta == pytest.approx(10000 * 4 ** (16 / 14), rel=1e-6)  # float32 key


def test_gguf_replaces_stale_scaling_keys(yarn_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "linear.gguf"
    assert cli("fix", str(yarn_gguf), "--out", str(out), "--method", "linear", "--factor", "2").returncode == 0
    after, _ = fields_and_tensors(out)
    assert after["llama.rope.scaling.type"] == "linear" and after["llama.rope.scaling.factor"] == 2.0
    assert "llama.rope.scaling.original_context_length" not in after


def test_checkpoint_folder_gets_transformers_native_config(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "src"
    src.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "vocab_size": 64,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
    }
    (src / "config.json").write_text(json.dumps(config))
    (src / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    r = cli("fix", str(src), "--out", str(out), "--method", "yarn", "--factor", "4", "--original", "4096")
    assert r.returncode == 0, r.stderr
    assert (out / "tokenizer.json").read_text() == "{}"
    assert json.loads((src / "config.json").read_text()) == config  # source untouched
    fixed = transformers.AutoConfig.from_pretrained(out)
    rope = getattr(fixed, "rope_parameters", None) or fixed.rope_scaling
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope.get("original_max_position_embeddings", 4096) == 4096
    # transformers' own yarn init on the fixed config: the published attention factor 0.1 ln 4 + 1
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, attention = ROPE_INIT_FUNCTIONS["yarn"](fixed, "cpu")
    assert attention == pytest.approx(0.1 * math.log(4) + 1, rel=1e-9)
    r = cli(
        "fix", str(src), "--out", str(tmp_path / "bad"), "--method", "part-ntk", "--factor", "4", "--original", "4096"
    )
    assert r.returncode == 2 and "no native rope type for 'part-ntk'" in r.stderr


@pytest.mark.slow
def test_fixed_gguf_runs_right_in_llama_cpp_without_ropepatch(tmp_path: Path) -> None:
    """Round trip through llama.cpp itself: the fixed copy needs no ropepatch to match transformers' YaRN."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'ropepatch[llamacpp]')")
    pytest.importorskip("transformers", reason="the reference is transformers' own YaRN")
    from llamacpp_models import random_weights, write_gguf
    from llamacpp_numeric import ORIGINAL, SEQ, YARN, Case, llamacpp_logits, transformers_logits

    import ropepatch

    weights = random_weights(0)
    plain = write_gguf(tmp_path / "plain.gguf", weights, context_length=ORIGINAL)
    out = tmp_path / "fixed.gguf"
    r = cli("fix", str(plain), "--out", str(out), "--method", "yarn", "--factor", "4", "--original", str(ORIGINAL))
    assert r.returncode == 0, r.stderr
    ropepatch.disable()
    tokens = [int(t) for t in np.random.default_rng(1).integers(3, 64, SEQ)]
    reference = transformers_logits(weights, Case("yarn", None, YARN), tokens)  # transformers' native YaRN
    fixed = llamacpp_logits(out, tokens)
    unfixed = llamacpp_logits(plain, tokens)
    assert np.abs(fixed - reference).max() < 1e-3
    assert np.abs(unfixed - reference)[ORIGINAL:].max() > 0.1  # the copy is what changed it
