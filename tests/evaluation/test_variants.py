"""Method names become the overrides that extend a model from L0 to the longest length."""

from __future__ import annotations

import pytest

from ropepatch.errors import RopeConfigError
from ropepatch.evaluation.variants import Variant, merge_variants, parse_variant, variants_for


def test_static_methods_get_target_over_original_dynamic_their_own():
    v = {
        x.label: x.overrides
        for x in variants_for(
            ["default", "linear", "ntk", "yarn", "dynamic", "dynamic-yarn", "auto"], original=128, target=1024
        )
    }
    assert v["default"] == {"method": "default"}
    assert v["auto"] == {}
    for name in ("linear", "ntk", "yarn"):
        assert v[name] == {
            "method": name,
            "original_max_position_embeddings": 128,
            "factor": 8.0,
            "max_position_embeddings": 1024,
        }
    assert v["dynamic"] == {"method": "dynamic", "original_max_position_embeddings": 128, "factor": 2.0}
    assert (
        v["dynamic-yarn"]["method"] == "dynamic-yarn" and v["dynamic-yarn"]["original_max_position_embeddings"] == 128
    )


def test_aliases_keep_their_label_and_factor_overrides_all():
    (v,) = variants_for(["dynamic-ntk"], original=100, target=400, factor=3)
    assert v.label == "dynamic-ntk" and v.overrides["method"] == "dynamic" and v.overrides["factor"] == 3.0


def test_bad_lists_are_errors():
    with pytest.raises(RopeConfigError, match="did you mean"):
        variants_for(["yarnn"], original=128, target=256)
    with pytest.raises(RopeConfigError, match="twice"):
        variants_for(["yarn", "yarn"], original=128, target=256)
    with pytest.raises(RopeConfigError, match="LongRoPE"):
        variants_for(["longrope"], original=128, target=256)


def test_parse_variant_uses_ropepatch_syntax():
    v = parse_variant("yarn16=yarn:factor=16,beta_fast=8")
    assert v == Variant("yarn16", {"method": "yarn", "factor": 16, "beta_fast": 8})
    assert v.describe() == "yarn:factor=16,beta_fast=8"
    with pytest.raises(RopeConfigError):
        parse_variant("no-equals-sign")
    with pytest.raises(RopeConfigError, match="unknown override key"):
        parse_variant("x=yarn:facter=2")
    with pytest.raises(RopeConfigError, match="already used"):
        merge_variants([v], [Variant("yarn16", {})])
