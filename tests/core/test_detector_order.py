"""The built-in detectors are asked in a fixed, stated order (pluggy asks the last registered first).

``known`` is ``tryfirst`` (the known-checkpoint table beats metadata), ``fallback`` is ``trylast``
(it always answers). Between them the dialect detectors: ``rope_scaling`` (rope dicts, a top-level
original context) before ``native`` (Qwen-1, DeepSeek/gpt-oss/Meta native files), ``gguf_keys`` for
GGUF only. BUILTIN_PLUGINS lists them in the reverse of that order; this pins it, so that a change
of the list cannot silently reorder detection. A third-party detector uses tryfirst/trylast to
place itself (see DEVELOPERS.md, "adding a detector dialect").
"""

from __future__ import annotations

from ropepatch.registry import get_registry


def test_builtin_detectors_are_asked_in_the_stated_order() -> None:
    impls = get_registry().pm.hook.detect_rope.get_hookimpls()  # pluggy calls these last to first
    asked = [
        impl.plugin_name.rsplit(".", 1)[-1] for impl in reversed(impls) if impl.plugin_name.startswith("ropepatch.")
    ]
    assert asked == ["known", "rope_scaling", "native", "gguf_keys", "fallback"]
    flags = {impl.plugin_name.rsplit(".", 1)[-1]: (impl.tryfirst, impl.trylast) for impl in impls}
    assert flags["known"] == (True, False) and flags["fallback"] == (False, True)
