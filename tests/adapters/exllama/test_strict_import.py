"""Strict is strict for ExLlamaV2/V3: an adapter failing at the runtime's import stops that import.

The real wheels (the harness: pip ``--no-deps`` into pytest's cache, CUDA extension stand-in) are
imported *after* ``enable()``. The failure is real: the adapter expects a patch point the release
lacks (a renamed point), so its capability probe fails when the import finishes.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from exllama_harness import STUBS, V2_VERSIONS, V3_VERSIONS, InstallError, _purge, install

import ropepatch
from ropepatch.adapters.base import Capability, ProbeFailed
from ropepatch.registry import get_registry


@pytest.fixture(params=[("exllamav2", V2_VERSIONS[-1]), ("exllamav3", V3_VERSIONS[-1])], ids=lambda p: p[0])
def importable(request: pytest.FixtureRequest) -> Iterator[str]:
    """The newest tested wheel on sys.path, not imported yet."""
    dist, version = request.param
    cache = Path(request.config.cache.mkdir("ropepatch-exllama"))
    try:
        target = install(cache, dist, version)
    except (InstallError, OSError) as exc:
        pytest.skip(f"cannot install {dist}=={version} from PyPI into {cache}: {exc}")
    ropepatch.disable()
    _purge(dist)
    ext_name, factory = STUBS[dist]
    sys.modules[ext_name] = factory()
    deps = cache / f"deps-{dist}"
    sys.path[:0] = [str(target)]
    sys.path.append(str(deps))
    importlib.invalidate_caches()
    try:
        yield dist
    finally:
        ropepatch.disable()
        _purge(dist)
        sys.path.remove(str(target))
        sys.path.remove(str(deps))
        importlib.invalidate_caches()


def _expect_renamed_point(monkeypatch: pytest.MonkeyPatch, dist: str) -> None:
    adapter = get_registry().adapters[dist]
    renamed = Capability(dist, "renamed_by_a_future_release")
    monkeypatch.setattr(adapter, "capabilities", (*adapter.capabilities, renamed))


def test_strict_failure_propagates_from_the_import(importable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect_renamed_point(monkeypatch, importable)
    ropepatch.enable(strict=True, runtimes=(importable,))
    with pytest.raises(ProbeFailed, match="renamed_by_a_future_release"):
        importlib.import_module(importable)
    assert importable not in sys.modules


def test_without_strict_the_import_succeeds_unpatched(importable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect_renamed_point(monkeypatch, importable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ropepatch.enable(runtimes=(importable,))
        importlib.import_module(importable)
    mine = [str(w.message) for w in caught if issubclass(w.category, ropepatch.RopepatchWarning)]
    assert len(mine) == 1 and "renamed_by_a_future_release" in mine[0], mine
    assert importable not in ropepatch.runtime.status()["installed"]
