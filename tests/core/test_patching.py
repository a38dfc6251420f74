"""The one patch mechanism: PatchSet (exact restore), transactions, post-import hooks and deferred patches.

The post-import tests import real modules written to a temporary folder, so the import machinery
(finder, loader, exec_module) runs as it does for a runtime.
"""

from __future__ import annotations

import sys
import types
import uuid
import warnings
from pathlib import Path

import pytest

from ropepatch.patching import (
    PatchSet,
    cancel_import_hooks,
    is_patched,
    patch_when_imported,
    propagate,
    when_imported,
)


class Owner:
    def method(self) -> str:
        return "original"


class Child(Owner):
    pass


def test_restore_puts_back_the_original_objects_themselves():
    module = types.ModuleType("toy")
    original_fn = module.fn = lambda: "original"
    original_method = Owner.__dict__["method"]
    patches = PatchSet("toy")
    assert patches.set(module, "fn", lambda: "patched") is original_fn  # returns what was visible
    patches.set(Owner, "method", lambda self: "patched")
    assert module.fn() == "patched" and Owner().method() == "patched" and is_patched(module.fn)
    assert len(patches) == 2
    assert patches.restore() == []
    assert module.fn is original_fn and Owner.__dict__["method"] is original_method and len(patches) == 0


def test_an_inherited_attribute_is_deleted_again_not_copied_down():
    patches = PatchSet("toy")
    patches.set(Child, "method", lambda self: "patched")
    assert Child().method() == "patched"
    patches.restore()
    assert "method" not in Child.__dict__ and Child().method() == "original"


def test_items_are_restored_and_added_keys_removed():
    registry = {"kept": 1}
    patches = PatchSet("toy")
    patches.set_item(registry, "kept", 2)
    patches.set_item(registry, "added", 3)
    patches.restore()
    assert registry == {"kept": 1}


def test_someone_elses_later_patch_is_left_alone_and_reported():
    module = types.ModuleType("toy")
    module.fn = original = lambda: "original"
    patches = PatchSet("toy")
    patches.set(module, "fn", lambda: "ours")
    theirs = module.fn = lambda: "theirs"
    problems = patches.restore()
    assert module.fn is theirs and len(problems) == 1 and "re-patched" in problems[0]
    module.fn = original


def test_a_transaction_undoes_its_own_patches_only():
    module = types.ModuleType("toy")
    module.a = a = object()
    module.b = b = object()
    patches = PatchSet("toy")
    patches.set(module, "a", object())
    with pytest.raises(RuntimeError, match="half-way"):
        with patches.transaction():
            patches.set(module, "b", object())
            raise RuntimeError("half-way")
    assert module.b is b and module.a is not a  # earlier patches stay; the failed group is gone
    assert len(patches) == 1
    patches.restore()
    assert module.a is a


@pytest.fixture
def module_dir(tmp_path: Path):
    """A folder on sys.path; ``make(source)`` writes a uniquely named module there and returns its name."""
    sys.path.insert(0, str(tmp_path))
    names: list[str] = []

    def make(source: str = "VALUE = 1\n") -> str:
        name = f"ropepatch_toy_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield make
    sys.path.remove(str(tmp_path))
    cancel_import_hooks()
    for name in names:
        sys.modules.pop(name, None)


def test_post_import_hook_fires_once_after_the_module_executed(module_dir):
    name = module_dir("VALUE = 41\n")
    seen: list[int] = []
    when_imported(name, lambda m: seen.append(m.VALUE + 1))
    assert seen == []
    __import__(name)
    __import__(name)
    assert seen == [42]
    when_imported(name, lambda m: seen.append(m.VALUE))  # already imported: now
    assert seen == [42, 41]


def test_a_failing_hook_never_breaks_the_import_unless_marked(module_dir):
    quiet, loud = module_dir(), module_dir()

    def boom(_m):
        raise ValueError("hook failed")

    when_imported(quiet, boom)
    __import__(quiet)  # logged, not raised
    when_imported(loud, lambda m: (_ for _ in ()).throw(propagate(ValueError("strict failure"))))
    with pytest.raises(ValueError, match="strict failure"):
        __import__(loud)
    assert loud not in sys.modules  # the import failed as a whole


def test_cancelled_hooks_do_not_fire(module_dir):
    name = module_dir()
    seen: list[str] = []

    def hook(_m):
        seen.append("fired")

    hook.__ropepatch_state__ = "mine"
    when_imported(name, hook)
    cancel_import_hooks(lambda h: getattr(h, "__ropepatch_state__", None) == "mine")
    __import__(name)
    assert seen == []


def test_deferred_patch_runs_now_for_an_imported_module_and_raises_to_the_caller(module_dir):
    name = module_dir("def fn():\n    return 'original'\n")
    module = __import__(name)
    patches = PatchSet("toy")
    patch_when_imported(patches, name, lambda m: patches.set(m, "fn", lambda: "patched"), live=lambda: True)
    assert module.fn() == "patched"
    with pytest.raises(KeyError):
        patch_when_imported(patches, name, lambda m: {}["missing"], live=lambda: True)
    patches.restore()
    assert module.fn() == "original"


def test_deferred_patch_is_all_or_nothing_and_reports_the_failure(module_dir):
    first = module_dir("def fn():\n    return 'original'\n")
    second = module_dir("def fn():\n    return 'original'\n")
    one = __import__(first)
    original = one.fn
    patches = PatchSet("toy")
    patches.set(one, "fn", lambda: "patched")
    failures: list[BaseException] = []

    def half_then_fail(m):
        patches.set(m, "fn", lambda: "patched")
        raise AttributeError("patch point moved")

    patch_when_imported(patches, second, half_then_fail, live=lambda: True, on_failure=failures.append)
    two = __import__(second)  # the user's import succeeds
    assert two.fn() == "original" and one.fn is original  # everything undone, the earlier point too
    assert len(failures) == 1 and "moved" in str(failures[0])


def test_deferred_patch_keeps_what_it_did_without_all_or_nothing(module_dir):
    first, second = module_dir("def fn():\n    return 1\n"), module_dir()
    one = __import__(first)
    patches = PatchSet("toy")
    patches.set(one, "fn", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_when_imported(
            patches, second, lambda m: {}["x"], live=lambda: True, all_or_nothing=False, on_failure=lambda e: None
        )
        __import__(second)
    assert one.fn() == 2
    patches.restore()


def test_deferred_patch_skips_when_no_longer_live(module_dir):
    name = module_dir("def fn():\n    return 'original'\n")
    patches = PatchSet("toy")
    alive = [True]
    patch_when_imported(patches, name, lambda m: patches.set(m, "fn", lambda: "patched"), live=lambda: alive[0])
    alive[0] = False  # disable() happened before the import
    assert __import__(name).fn() == "original" and len(patches) == 0


def test_a_failure_handler_that_raises_a_marked_error_fails_the_import(module_dir):
    name = module_dir()
    patches = PatchSet("toy")

    def strict(exc: BaseException) -> None:
        raise propagate(exc)

    patch_when_imported(patches, name, lambda m: {}["gone"], live=lambda: True, on_failure=strict)
    with pytest.raises(KeyError, match="gone"):
        __import__(name)
