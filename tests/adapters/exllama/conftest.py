"""Fixtures: one real ExLlamaV2/V3 wheel per version, imported on CPU (see exllama_harness)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exllama_harness import V2_VERSIONS, V3_VERSIONS, InstallError, install, loaded

# ROPEPATCH_EXLLAMA_VERSIONS=0.3.2,1.6.5 narrows the matrix (e.g. for a quick local run);
# ROPEPATCH_EXLLAMAV2_VERSIONS / ROPEPATCH_EXLLAMAV3_VERSIONS replace one runtime's list, so a release
# newer than the harness's lists runs too (`python compat/run.py --latest` sets them)
_ONLY = {v.strip() for v in os.environ.get("ROPEPATCH_EXLLAMA_VERSIONS", "").split(",") if v.strip()}


def _versions(dist: str, all_versions: tuple[str, ...]) -> list[str]:
    given = os.environ.get(f"ROPEPATCH_{dist.upper()}_VERSIONS", "")
    chosen = [v.strip() for v in given.split(",") if v.strip()] or list(all_versions)
    return [v for v in chosen if not _ONLY or v in _ONLY]


def _cache(config: pytest.Config) -> Path:
    return Path(config.cache.mkdir("ropepatch-exllama"))


_failed: dict[str, str] = {}


def _runtime(request: pytest.FixtureRequest, dist: str) -> Iterator[Any]:
    version = request.param
    key = f"{dist}=={version}"
    if key in _failed:
        pytest.skip(_failed[key])
    cache = _cache(request.config)
    try:
        target = install(cache, dist, version)
    except (InstallError, OSError) as exc:
        # only a registry problem gets here: the wheels are pure Python and install anywhere
        _failed[key] = f"cannot install {key} from PyPI into {cache}: {exc}"
        pytest.skip(_failed[key])
    with loaded(dist, target, cache / f"deps-{dist}") as module:
        yield module


@pytest.fixture(scope="module", params=_versions("exllamav2", V2_VERSIONS))
def exllamav2(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The ``exllamav2`` package of one tested version (real code, stand-in CUDA extension)."""
    yield from _runtime(request, "exllamav2")


@pytest.fixture(scope="module", params=_versions("exllamav3", V3_VERSIONS))
def exllamav3(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The ``exllamav3`` package of one tested version (real code, stand-in CUDA extension)."""
    yield from _runtime(request, "exllamav3")


@pytest.fixture(autouse=True)
def _ropepatch_disabled_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ropepatch

    monkeypatch.delenv("ROPEPATCH", raising=False)
    yield
    ropepatch.disable()
