"""transformers' validator contract holds with ropepatch enabled.

transformers' own ``tests/utils/test_modeling_rope_utils.py`` checks that every registered rope type
except the ones complete with ``rope_theta`` alone (``default``, ``proportional``) fails validation
with a ``KeyError`` when it is given only ``rope_theta``. ropepatch registers its own types in the same
registry, so they must keep that contract; its errors are also :class:`RopeConfigError`\\ s.
"""

from __future__ import annotations

from typing import Any

import pytest

from ropepatch.errors import RopeConfigError, RopeConfigKeyError

#: types transformers itself declares complete with rope_theta alone (exempt in its own test)
THETA_ONLY = {"default", "proportional"}


def _validate(config: Any) -> None:
    """The version's validation entry point (5.x ``validate_rope``; 4.43-4.57 ``rope_config_validation``)."""
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    else:
        from transformers.modeling_rope_utils import rope_config_validation

        rope_config_validation(config)


def _config_with(rope: dict[str, Any], *, nested: bool = False) -> Any:
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128)
    value: Any = {"full_attention": dict(rope), "sliding_attention": dict(rope)} if nested else dict(rope)
    # set the attribute the version's validator reads (no setter: v5's rope_scaling setter re-standardises)
    attr = "rope_parameters" if hasattr(config, "validate_rope") else "rope_scaling"
    config.__dict__[attr] = value
    if nested:
        config.__dict__["layer_types"] = ["full_attention", "sliding_attention"]  # what makes the dict nested
    return config


def _registered_types() -> list[str]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return sorted(t for t in ROPE_INIT_FUNCTIONS if t not in THETA_ONLY)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "per-layer-type"])
def test_every_registered_type_given_only_rope_theta_raises_key_error(enabled: Any, nested: bool) -> None:
    import transformers

    if nested and not hasattr(transformers.LlamaConfig(), "validate_rope"):
        pytest.skip("per-layer-type rope dicts exist from transformers 5 on")
    types = _registered_types()
    ours = [t for t in types if t.startswith("ropepatch_")]
    assert ours, "ropepatch registered no rope types"
    assert set(types) - set(ours), "transformers' own types are missing from the registry"
    for rope_type in types:
        config = _config_with({"rope_type": rope_type, "rope_theta": 10000.0}, nested=nested)
        with pytest.raises(KeyError) as info:
            _validate(config)
        if rope_type in ours:
            # ropepatch's own error, naming the key to look at, readable as text (not KeyError's repr); the
            # spec ropepatch keeps beside its types is trusted only when made in this process, never from a dict
            assert isinstance(info.value, RopeConfigError)
            assert info.value.key == "rope_parameters"
            assert str(info.value).startswith("key 'rope_parameters': rope type")


def test_the_default_type_stays_valid(enabled: Any) -> None:
    _validate(_config_with({"rope_type": "default", "rope_theta": 10000.0}))


def test_a_rewritten_config_still_validates(enabled: Any) -> None:
    """The other half of the contract: a complete ropepatch rope dict passes validation."""
    import ropepatch
    from ropepatch.adapters.transformers.plan import _ours_dict
    from ropepatch.adapters.transformers.registry import type_key

    spec = ropepatch.detect(
        {"head_dim": 16, "max_position_embeddings": 256},
        method="part-ntk",
        factor=4.0,
        original_max_position_embeddings=64,
    )
    key = type_key(spec)
    attr = "rope_parameters" if hasattr(_config_with({}), "validate_rope") else "rope_scaling"
    config = _config_with(_ours_dict(spec, key, None, attr, None))
    _validate(config)


def test_the_error_is_both_kinds() -> None:
    error = RopeConfigKeyError("the rope dict has no 'factor'", path="config.json", key="factor")
    assert isinstance(error, KeyError) and isinstance(error, RopeConfigError) and isinstance(error, ValueError)
    assert str(error) == "config.json: key 'factor': the rope dict has no 'factor'"
    with pytest.raises(KeyError):
        raise error
