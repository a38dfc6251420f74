"""Re-binding a factory that modules copied with ``from pkg import get_rope``."""

from __future__ import annotations

import sys
import types

from ropepatch.adapters.rebind import rebind_everywhere
from ropepatch.patching import PatchSet


def test_rebind_replaces_copies_and_restores(monkeypatch):
    def factory():
        return "original"

    def replacement():
        return "ropepatch"

    pkg = types.ModuleType("rebindpkg")
    pkg.get_rope = factory
    user = types.ModuleType("rebindpkg.models.llama")
    user.get_rope = factory  # from rebindpkg import get_rope
    alias = types.ModuleType("rebindpkg.models.other")
    alias._rope = factory  # from rebindpkg import get_rope as _rope
    outside = types.ModuleType("elsewhere")
    outside.get_rope = factory
    for m in (pkg, user, alias, outside):
        monkeypatch.setitem(sys.modules, m.__name__, m)

    patches = PatchSet("test")
    done = rebind_everywhere(factory, replacement, patches, "rebindpkg")
    assert sorted(done) == ["rebindpkg.get_rope", "rebindpkg.models.llama.get_rope", "rebindpkg.models.other._rope"]
    assert user.get_rope() == alias._rope() == pkg.get_rope() == "ropepatch"
    assert outside.get_rope() == "original"  # other packages are not touched
    patches.restore()
    assert user.get_rope is factory and alias._rope is factory and pkg.get_rope is factory
