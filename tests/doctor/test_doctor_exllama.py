"""The doctor's ExLlamaV2/V3 probes on real wheels (CPU, extension stand-in), on corpus checkpoints.

The wheels come from the ExLlama adapter tests' harness (tests/adapters/exllama/exllama_harness.py:
pip ``--no-deps`` into pytest's cache, imported with a stand-in for the CUDA extension, which RoPE
set-up never calls). Only the newest tested version of each runs here; the adapter tests cover the
rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from doctor_paths import CORPUS

from ropepatch.adapters.exllama.probes import ExLlamaV2Probe, ExLlamaV3Probe
from ropepatch.doctor.diagnose import _prepare, diagnose

HARNESS = Path(__file__).resolve().parents[1] / "adapters" / "exllama"
if not (HARNESS / "exllama_harness.py").exists():
    pytest.skip("needs the ExLlama test harness (tests/adapters/exllama/exllama_harness.py)", allow_module_level=True)
sys.path.insert(0, str(HARNESS))
from exllama_harness import InstallError, install, loaded  # noqa: E402


def runtime(request, dist: str, version: str):
    cache = Path(request.config.cache.mkdir("ropepatch-exllama"))
    try:
        target = install(cache, dist, version)
    except (InstallError, OSError) as exc:
        pytest.skip(f"cannot install {dist}=={version} from PyPI into {cache}: {exc}")
    return loaded(dist, target, cache / f"deps-{dist}")


@pytest.fixture(scope="module")
def exllamav2(request):
    with runtime(request, "exllamav2", "0.3.2") as module:
        yield module


@pytest.fixture(scope="module")
def exllamav3(request):
    with runtime(request, "exllamav3", "1.6.5") as module:
        yield module


def verdicts(name: str, probe) -> tuple[str, str, dict]:
    if not CORPUS.is_dir():
        pytest.fail("the checkpoint corpus tests/data/checkpoints is missing")
    (entry,) = diagnose(CORPUS / f"{name}.json", probes=[probe])["runtimes"]
    return entry["native"]["verdict"], entry["with_ropepatch"]["verdict"], entry


V3_CASES = [
    ("meta-llama__Llama-3.1-8B-Instruct", "matches", "matches"),
    ("bhenrym14__airophin-13b-pntk-16k-fp16", "wrong", "matches"),  # top-level original ignored: plain RoPE
    ("microsoft__Phi-3-vision-128k-instruct", "matches", "matches"),  # ExLlamaV3 reads legacy 'su' itself
    ("internlm__internlm2_5-7b", "unsupported", "unsupported"),  # no InternLM2 architecture
]
V2_CASES = [
    ("meta-llama__Llama-3.1-8B-Instruct", "matches", "matches"),
    ("bhenrym14__airophin-13b-pntk-16k-fp16", "wrong", "matches"),
    ("NousResearch__Yarn-Llama-2-13b-128k", "wrong", "matches"),  # YaRN ramp taken from max_seq_len
    ("microsoft__Phi-3-vision-128k-instruct", "matches", "matches"),  # reads legacy 'su' itself
    # loads as Llama with plain RoPE; with ropepatch: per-position Qwen-1 tables, compared at the last row
    ("Qwen__Qwen-7B-Chat", "wrong", "matches"),
]


@pytest.mark.parametrize("name,native,patched", V3_CASES, ids=[c[0] for c in V3_CASES])
def test_exllamav3(exllamav3, name, native, patched):
    got_native, got_patched, entry = verdicts(name, ExLlamaV3Probe())
    assert (got_native, got_patched) == (native, patched), entry
    assert entry["version"] == "1.6.5"


@pytest.mark.parametrize("name,native,patched", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_exllamav2(exllamav2, name, native, patched):
    got_native, got_patched, entry = verdicts(name, ExLlamaV2Probe())
    assert (got_native, got_patched) == (native, patched), entry


def test_exllamav2_tables_are_plain_rope_for_airophin(exllamav2):
    # independent reference: test-vectors.json "default" (d=128, base 1e4), read off ExLlamaV2's fp16 tables
    if not CORPUS.is_dir():
        pytest.fail("the checkpoint corpus tests/data/checkpoints is missing")
    vectors = json.loads((CORPUS.parent / "reference" / "test-vectors.json").read_text())
    expected = next(c for c in vectors["cases"] if c["id"] == "default")["expected"]
    _, config, _ = _prepare(CORPUS / "bhenrym14__airophin-13b-pntk-16k-fp16.json")
    comp = ExLlamaV2Probe().compute(config, 16384, patched=False)
    assert comp.status == "ok" and comp.attention_factor == pytest.approx(1.0, abs=1e-3)
    for key in ("inv_freq[0]", "inv_freq[1]", "inv_freq[31]", "inv_freq[-1]"):
        i = int(key[9:-1])
        assert comp.inv_freq[i] == pytest.approx(expected[key], rel=1e-3), key


@pytest.mark.parametrize("layout", ["neox", "gptj"])
def test_frequencies_recovered_from_fp16_tables(layout):
    import torch

    from ropepatch.adapters.exllama.probes import frequencies_from_tables

    inv = 1.0 / 10000 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128) / 4  # linear x4, d=128
    angles = torch.arange(16384, dtype=torch.float64)[:, None] * inv
    cols = torch.cat((angles, angles), 1) if layout == "neox" else angles.repeat_interleave(2, 1)
    sin, cos = (1.1 * cols.sin()).half(), (1.1 * cols.cos()).half()
    got, attention, residual = frequencies_from_tables(sin, cos)
    assert attention == pytest.approx(1.1, rel=1e-4) and residual < 0.01
    assert max(abs(g - w) / w for g, w in zip(got, inv.tolist(), strict=True)) < 2e-3
