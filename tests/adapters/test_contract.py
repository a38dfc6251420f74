"""The contract every registered adapter keeps (one test, run over each; OpenTelemetry's shape).

* its version range parses: a floor, a tested-up-to at or above it, no upper bound that switches
  ropepatch off, and capability probes on its own runtime's modules;
* it installs inside a transaction: a failure after it patched leaves the runtime exactly as it was;
* ``disable()`` restores every patched object to identity;
* it is a no-op for a plain checkpoint with no overrides.

The install checks need the runtime itself: transformers here, ExLlamaV2/V3 as real wheels through
the ExLlama tests' harness; TGI and vLLM cannot be imported here (skipped, saying why).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import ropepatch
from ropepatch.adapters.base import Adapter, Capability
from ropepatch.registry import get_registry

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE.parent / "data" / "checkpoints"
ADAPTERS = sorted(get_registry().adapters)
_ABSENT = object()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ROPEPATCH", raising=False)
    ropepatch.disable()
    yield
    ropepatch.disable()


@pytest.mark.parametrize("name", ADAPTERS)
def test_its_range_parses_with_a_floor_and_no_upper_bound(name: str) -> None:
    adapter = get_registry().adapters[name]
    assert isinstance(adapter, Adapter) and adapter.name == name and adapter.trigger
    floor = adapter.minimum()
    assert isinstance(floor, Version)
    assert Version(adapter.tested_up_to) >= floor
    facts = adapter.describe()
    assert facts["requires"] == f"{adapter.distribution}>={floor}" and "<" not in facts["requires"]
    # a future release is never refused by version (TGI's 1.x adapter hands newer layouts to the 'tgi' one)
    same = [a for a in get_registry().adapters.values() if a.distribution == adapter.distribution]
    assert any(a.problem(Version("9999.0")) is None for a in same)
    assert adapter.capabilities and all(isinstance(c, Capability) for c in adapter.capabilities)
    package = adapter.trigger.split(".")[0]
    assert all(c.module.split(".")[0] == package for c in adapter.capabilities)


def _transformers() -> Any:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    for module in (
        "transformers.modeling_rope_utils",
        "transformers.configuration_utils",
        "transformers.modeling_utils",
        "transformers.dynamic_module_utils",
        "transformers.modeling_gguf_pytorch_utils",
    ):
        importlib.import_module(module)  # every deferred point patches now
    return sys.modules["transformers"]


def _exllama(request: pytest.FixtureRequest, dist: str) -> Iterator[Any]:
    sys.path.insert(0, str(HERE / "exllama"))
    try:
        from exllama_harness import V2_VERSIONS, V3_VERSIONS, InstallError, install, loaded
    finally:
        sys.path.remove(str(HERE / "exllama"))
    version = (V2_VERSIONS if dist == "exllamav2" else V3_VERSIONS)[-1]
    cache = Path(request.config.cache.mkdir("ropepatch-exllama"))
    try:
        target = install(cache, dist, version)
    except (InstallError, OSError) as exc:
        pytest.skip(f"cannot install {dist}=={version} from PyPI into {cache}: {exc}")
    with loaded(dist, target, cache / f"deps-{dist}") as module:
        if dist == "exllamav3":
            importlib.import_module("exllamav3.util.rope")
            importlib.import_module("exllamav3.model.config")
        yield module


@pytest.fixture
def runtime(request: pytest.FixtureRequest) -> Iterator[str]:
    """The adapter's runtime, imported (real code), or a skip saying why it cannot be here."""
    name = request.param
    if name == "transformers":
        _transformers()
        yield name
    elif name in ("exllamav2", "exllamav3"):
        yield from (name for _ in _exllama(request, name))
    else:
        pytest.skip(
            f"{name}: its runtime cannot be imported here (vLLM has no CPU wheel in this environment, compat/vllm "
            "runs it; TGI's server is not on the package registries, compat/tgi runs its rotary module)"
        )


def _records(patches: Any) -> list[tuple[Any, str, Any, bool]]:
    return [(r.owner, r.attr, r.original, r.is_item) for r in patches._records]


def _current(owner: Any, attr: str, is_item: bool) -> Any:
    if is_item:
        return owner.get(attr, _ABSENT)
    namespace = getattr(owner, "__dict__", {})
    return namespace.get(attr, _ABSENT)


def _originals_in_place(records: list[tuple[Any, str, Any, bool]]) -> list[str]:
    wrong = []
    for owner, attr, original, is_item in records:
        now = _current(owner, attr, is_item)
        expected = _ABSENT if original is sys.modules["ropepatch.patching"]._ABSENT else original
        if now is not expected:
            wrong.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}")
    return wrong


@pytest.mark.parametrize("runtime", ADAPTERS, indirect=True)
def test_it_installs_in_a_transaction_and_disable_restores_identity(
    runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = runtime
    ropepatch.enable(runtimes=(name,))
    state = ropepatch.runtime.current()
    assert name in state.installed, state.failures
    records = _records(state.installed[name])
    assert records, "the adapter patched nothing"
    ropepatch.disable()
    assert _originals_in_place(records) == []

    # a failure after every patch went in: the transaction takes them all out again
    adapter = get_registry().adapters[name]
    install = type(adapter).install

    def install_then_fail(self: Any, patches: Any, state: Any) -> None:
        install(self, patches, state)
        raise RuntimeError("deliberate failure after patching")

    monkeypatch.setattr(type(adapter), "install", install_then_fail)
    with pytest.warns(ropepatch.RopepatchWarning, match="deliberate failure"):
        ropepatch.enable(runtimes=(name,))
    assert name not in ropepatch.runtime.status()["installed"]
    assert _originals_in_place(records) == []


@pytest.mark.filterwarnings("error::ropepatch.RopepatchWarning")
@pytest.mark.parametrize("name", ADAPTERS)
def test_a_plain_checkpoint_without_overrides_is_left_alone(name: str) -> None:
    adapter = get_registry().adapters[name]
    ropepatch.enable(runtimes=())
    state = ropepatch.runtime.current()
    for checkpoint in ("meta-llama__Llama-2-7b-hf.json", "mistralai__Mistral-7B-v0.3.json"):
        assert adapter.spec_for(state, CHECKPOINTS / checkpoint) is None
    assert adapter.spec_for(state, CHECKPOINTS / "bhenrym14__airophin-13b-pntk-16k-fp16.json") is not None
    ropepatch.disable()
    ropepatch.enable(runtimes=(), method="default")  # an override naming plain RoPE is not "left alone"
    state = ropepatch.runtime.current()
    assert adapter.spec_for(state, CHECKPOINTS / "meta-llama__Llama-2-7b-hf.json") is not None


def test_transformers_builds_a_plain_model_exactly_as_without_ropepatch() -> None:
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)

    def build() -> Any:
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=torch.float32).eval()

    ids = torch.arange(40)[None]
    said = len(ropepatch.report()["models"])
    with torch.no_grad():
        alone = build()(ids).logits
        ropepatch.enable()
        patched = build()
        assert patched.model.rotary_emb.rope_type == "default"
        assert torch.equal(patched(ids).logits, alone)
    assert len(ropepatch.report()["models"]) == said  # no change recorded, so no line said
