"""``RopeSpec(...)`` and ``RopeSpec.from_dict`` over hostile values: a correct spec or a
RopeConfigError, never another exception. A spec round-trips through ``to_dict``/``from_dict``
and JSON, and computes finite positive frequencies or says why not (hardening_kit.check_spec).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hardening_kit as kit
import hardening_strategies as hs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ropepatch import RopeConfigError
from ropepatch.spec import RopeSpec

MANIFEST = json.loads((kit.CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))


def _payload(data: Any) -> bytes:
    try:
        return json.dumps(data, allow_nan=True).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(data).encode("utf-8", "replace")


@kit.fuzz_settings(600)
@given(data=hs.spec_dicts())
def test_from_dict_gives_spec_or_error(data: dict[str, Any]) -> None:
    kit.outcome_of("spec-dict", lambda: RopeSpec.from_dict(data), payload=_payload(data), suffix=".json")


@kit.fuzz_settings(600)
@given(data=hs.spec_dicts())
def test_constructor_gives_spec_or_error(data: dict[str, Any]) -> None:
    data = {k: v for k, v in data.items() if k != "schema" and k in hs.SPEC_FIELDS}
    if "method" not in data:
        data["method"] = "default"
    kit.outcome_of("spec-kwargs", lambda: RopeSpec(**data), payload=_payload(data), suffix=".json")


@kit.fuzz_settings(400)
@given(
    method=st.sampled_from(["dynamic", "dynamic-ntk-unclamped", "qwen-dynamic-ntk", "dynamic-yarn", "longrope"]),
    factor=st.one_of(st.none(), st.floats(0.01, 1e6), st.sampled_from([1e300, 5e-324])),
    original=st.sampled_from([1, 2, 2048, 4096, 2**40]),
    seq_len=st.one_of(
        st.none(), st.integers(0, 2**20), st.sampled_from([-1, 10**400, math.nan, math.inf, 2.5, "x", True])
    ),
    position=st.one_of(st.integers(-5, 2**40), st.sampled_from([math.nan, math.inf, "p", 10**400])),
    params=st.dictionaries(
        st.sampled_from(["alpha_scaler", "use_logn_attn", "finetuned", "attention_factor", "mscale", "mscale_all_dim"]),
        st.one_of(st.floats(-2, 1e300), st.booleans(), st.sampled_from([0, -1.0, 1e-300])),
        max_size=3,
    ),
)
def test_dynamic_methods_at_any_length(
    method: str, factor: float | None, original: int, seq_len: Any, position: Any, params: dict[str, Any]
) -> None:
    if method == "longrope":
        params = {**params, "short_factor": [1.0] * 32, "long_factor": [4.0] * 32}

    def run() -> Any:
        spec = RopeSpec(
            method=method,
            rotary_dim=64,
            factor=factor,
            original_max_position_embeddings=original,
            max_position_embeddings=original * 4,
            params=params,
        )
        for call in (lambda: spec.frequencies(seq_len), lambda: spec.query_scale(position)):
            try:
                result = call()
            except RopeConfigError:
                continue
            values = result[0].tolist() + [result[1]] if isinstance(result, tuple) else [result]
            assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values), values[:4]
        return spec

    case = {"method": method, "factor": factor, "original": original, "seq_len": seq_len, "position": position}
    kit.outcome_of("spec-dynamic", run, payload=repr({**case, "params": params}).encode())


def test_a_typo_in_a_spec_field_names_the_closest_field() -> None:
    with pytest.raises(RopeConfigError, match="did you mean 'factor'") as info:
        RopeSpec.from_dict({"method": "linear", "facter": 2})
    assert info.value.key == "facter"
    spec = RopeSpec(method="linear", factor=2.0, rotary_dim=8)
    with pytest.raises(RopeConfigError, match="did you mean 'rotary_dim'"):
        spec.replace(rotary_dm=16)
    # the constructor itself: no TypeError from the dataclass __init__
    with pytest.raises(RopeConfigError, match="did you mean 'factor'") as info:
        RopeSpec(method="linear", facter=2.0)  # type: ignore[call-arg]
    assert info.value.key == "facter"
    with pytest.raises(RopeConfigError, match="missing a required argument: 'method'") as info:
        RopeSpec()  # type: ignore[call-arg]
    assert info.value.key == "method"


def test_path_source_is_stored_as_text(tmp_path: Path) -> None:
    spec = RopeSpec(method="default", source=tmp_path / "config.json", rotary_dim=8)  # type: ignore[arg-type]
    assert spec.source == str(tmp_path / "config.json")
    kit.check_spec(spec)


def test_ignored_parameters_are_not_kept_but_reported() -> None:
    spec = RopeSpec(method="linear", factor=2.0, rotary_dim=8, params={"beta_fast": 4, "junk": [math.nan]})
    assert dict(spec.params) == {}
    assert any("'junk' is not used" in w for w in spec.warnings)
    kit.check_spec(spec)


def test_tuple_parameters_round_trip() -> None:
    spec = RopeSpec(
        method="longrope",
        rotary_dim=8,
        original_max_position_embeddings=4096,
        max_position_embeddings=131072,
        params={"short_factor": (1.0, 1.0, 1.0, 1.0), "long_factor": (2.0, 2.0, 2.0, 2.0)},
    )
    assert spec.params["short_factor"] == [1.0, 1.0, 1.0, 1.0]
    kit.check_spec(spec)


def test_inspect_renders_a_huge_attention_factor() -> None:
    # found by review: the text view squared it with ** (OverflowError) instead of * (inf)
    spec = RopeSpec(
        method="yarn",
        factor=4.0,
        original_max_position_embeddings=4096,
        rotary_dim=8,
        params={"attention_factor": 1e200},
    )
    kit.check_spec(spec)


# -- regression corpus ---------------------------------------------------------------------
SPEC_CASES = sorted((kit.CORPUS / "spec").glob("*.json"))


@pytest.mark.parametrize("path", SPEC_CASES, ids=[p.stem for p in SPEC_CASES])
def test_spec_corpus_replays(path: Path) -> None:
    """Each file holds ``{"spec": <from_dict input>, "calls": [{"seq_len": n} | {"position": p}]}``."""
    entry = MANIFEST[f"spec/{path.name}"]
    case = json.loads(path.read_text(encoding="utf-8"))
    spec = kit.outcome_of("corpus-spec", lambda: RopeSpec.from_dict(case["spec"]))
    if entry["expect"] == "error":
        assert spec is None, entry["bug"]
        with pytest.raises(RopeConfigError) as info:
            RopeSpec.from_dict(case["spec"])
        assert entry["key"] in (info.value.key or ""), (entry, str(info.value))
        return
    assert spec is not None and spec.method == entry["method"], entry["bug"]
    for call in case["calls"] or [{"seq_len": None}]:
        if entry.get("calls_fail"):
            with pytest.raises(RopeConfigError):
                _values(spec, call)
        else:
            values = _values(spec, call)
            assert all(math.isfinite(v) and v > 0 for v in values), (entry["bug"], values[:4])


def _values(spec: RopeSpec, call: dict[str, Any]) -> list[float]:
    if "position" in call:
        return [spec.query_scale(call["position"])]
    inv, attention = spec.frequencies(call["seq_len"])
    return [*inv.tolist(), attention, spec.attention_factor(call["seq_len"])]
