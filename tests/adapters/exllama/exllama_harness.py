"""Run the real ExLlamaV2/V3 wheels on a machine without CUDA.

Both packages import their compiled CUDA extension when the package is imported (and try to
JIT-build it with nvcc when it is missing). The ONLY thing not real in these tests is that
extension: a stand-in module is put in ``sys.modules`` first. Everything the tests look at (config
parsing, the sin/cos tables of ExLlamaV2's device context, ExLlamaV3's ``RoPE`` module) is the
runtimes' own Python code running on CPU. No GPU machine is lent to this task, so the kernels that
read the tables are not exercised here.

Wheels are installed once into pytest's cache folder (``.pytest_cache/d/ropepatch-exllama``), one
``--target`` folder per version, with ``--no-deps``: torch, numpy, safetensors, tokenizers, rich,
pillow, pyyaml, pydantic and triton are already there; sentencepiece (ExLlamaV2 <= 0.2.6),
marisa-trie and llguidance (ExLlamaV3) go into a shared deps folder.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

V2_VERSIONS = ("0.1.0", "0.1.8", "0.2.4", "0.2.6", "0.2.8", "0.3.2")
V3_VERSIONS = ("1.0.0", "1.4.9", "1.6.5")
EXTRA_DEPS = {
    "exllamav2": ("sentencepiece",),
    "exllamav3": ("marisa-trie", "llguidance", "kbnf<0.5", "formatron", "general-sam", "frozendict"),
}


class InstallError(RuntimeError):
    """pip could not install a wheel (PyPI unreachable, or the version is gone)."""


def install(cache: Path, dist: str, version: str) -> Path:
    """The folder holding ``dist==version`` (installed there on first use) and its deps folder."""
    target = cache / f"{dist}-{version}"
    marker = target / ".complete"
    if not marker.exists():
        _pip(["--target", str(target), f"{dist}=={version}"])
        marker.write_text("ok")
    deps = cache / f"deps-{dist}"
    deps_marker = deps / ".complete"
    if not deps_marker.exists():
        _pip(["--target", str(deps), *EXTRA_DEPS[dist]])
        deps_marker.write_text("ok")
    return target


def _pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InstallError(f"pip install {' '.join(args[2:])} failed: {' | '.join(tail)}")


def _stub_v2() -> types.ModuleType:
    # ExLlamaV2's ext.py does `import exllamav2_ext` and only calls into it from kernels
    return types.ModuleType("exllamav2_ext")


def _stub_v3() -> types.ModuleType:
    # ExLlamaV3's ext.py imports the extension only if find_spec() says it is a compiled module, and
    # some modules read attributes at import time: give it an extension-looking spec and let every
    # attribute be a function that fails loudly if a kernel is ever called.
    module = types.ModuleType("exllamav3_ext")
    origin = "/nonexistent/exllamav3_ext" + importlib.machinery.EXTENSION_SUFFIXES[0]
    module.__spec__ = importlib.machinery.ModuleSpec(
        "exllamav3_ext", loader=importlib.machinery.BuiltinImporter, origin=origin
    )

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def kernel(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"exllamav3_ext.{name} is a CPU-test stand-in; the CUDA kernel is not available")

        return kernel

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


STUBS = {"exllamav2": ("exllamav2_ext", _stub_v2), "exllamav3": ("exllamav3_ext", _stub_v3)}


def _purge(dist: str) -> None:
    ext = STUBS[dist][0]
    for name in list(sys.modules):
        if name == dist or name.startswith(dist + ".") or name == ext:
            del sys.modules[name]


@contextlib.contextmanager
def loaded(dist: str, target: Path, deps: Path) -> Iterator[types.ModuleType]:
    """Import ``dist`` from ``target`` with the extension stand-in; undo everything afterwards."""
    import ropepatch

    ropepatch.disable()
    _purge(dist)
    importlib.invalidate_caches()
    ext_name, factory = STUBS[dist]
    sys.modules[ext_name] = factory()
    sys.path[:0] = [str(target)]
    sys.path.append(str(deps))
    try:
        yield importlib.import_module(dist)
    finally:
        ropepatch.disable()
        _purge(dist)
        sys.path.remove(str(target))
        sys.path.remove(str(deps))
        importlib.invalidate_caches()


def write_model(folder: Path, config: dict[str, Any]) -> Path:
    """A checkpoint folder with ``config.json`` and an empty safetensors file (no weights needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
    }
    base.update(config)
    for key in [k for k, v in base.items() if v is None]:
        del base[key]
    (folder / "config.json").write_text(json.dumps(base))
    header = b"{}"
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return folder
