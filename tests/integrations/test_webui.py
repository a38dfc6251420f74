"""The text-generation-webui integration: per-model overrides, setup/reload, panel data, model check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import ropepatch
from ropepatch.errors import RopeConfigError
from ropepatch.integrations import webui


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("ROPEPATCH", raising=False)
    ropepatch.disable()
    webui._startup_done.clear()  # one start-up per process: each test is a new start-up
    webui.llamacpp_notes.clear()
    yield
    ropepatch.disable()


def model(folder: Path, **config: Any) -> Path:
    folder.mkdir(parents=True)
    base = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 2, "max_position_embeddings": 4096}
    base.update(config)
    (folder / "config.json").write_text(json.dumps(base))
    return folder


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}


def test_overrides_persist_per_model_and_validate(tmp_path: Path) -> None:
    store = webui.OverrideStore(tmp_path / "user_data" / "ropepatch" / "overrides.json")
    saved = store.set(
        "Llama [8k]*", {"method": "ntk", "alpha": "2.5", "factor": 0, "original_max_position_embeddings": None}
    )
    assert saved == {"method": "ntk", "alpha": 2.5}
    again = webui.OverrideStore(store.path)  # a new process reads the same file
    assert again.get("Llama [8k]*") == {"method": "ntk", "alpha": 2.5}
    assert json.loads(store.path.read_text()) == {"Llama [8k]*": {"alpha": 2.5, "method": "ntk"}}
    with pytest.raises(RopeConfigError, match="did you mean 'yarn'"):
        store.set("other", {"method": "yarm"})
    with pytest.raises(RopeConfigError, match="whole number"):
        store.set("other", {"original_max_position_embeddings": 4096.5})
    assert "other" not in store.all()
    store.set("Llama [8k]*", {"method": webui.FROM_CHECKPOINT})
    assert store.all() == {}


def test_per_model_overrides_apply_to_that_model_only(tmp_path: Path) -> None:
    models = tmp_path / "models"
    a = model(models / "tiny-[a]", rope_scaling=YARN, max_position_embeddings=16384)
    b = model(models / "tiny-b")
    store = webui.OverrideStore(tmp_path / "overrides.json")
    store.set("tiny-[a]", {"factor": 8})
    webui.enable_with_store(store)
    state = ropepatch.runtime.current()
    spec_a, spec_b = state.spec_for(a), state.spec_for(b)
    assert spec_a.method == "yarn" and spec_a.effective_factor == 8.0
    assert spec_a.provenance["factor"].startswith("per-model mapping")
    assert spec_b.method == "default"
    store.set("tiny-b", {"method": "linear", "factor": 2})
    webui.enable_with_store(store)  # a change in the panel re-enables with the new mapping
    assert ropepatch.runtime.current().spec_for(b).method == "linear"


class Webui:
    """The two webui functions the reload uses, recording calls (the real ones run in compat/webui)."""

    def __init__(self, loaded: str | None, keep_model_name: bool = True) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.shared = SimpleNamespace(model=object() if loaded else None, model_name=loaded or "None", tokenizer=None)
        if keep_model_name:

            def unload_model(keep_model_name: bool = False) -> None:
                self.calls.append(("unload", keep_model_name))
                self.shared.model = None
                if not keep_model_name:
                    self.shared.model_name = "None"
        else:

            def unload_model() -> None:  # type: ignore[misc]
                self.calls.append(("unload", None))
                self.shared.model, self.shared.model_name = None, "None"

        def load_model(name: str) -> tuple[Any, Any]:
            self.calls.append(("load", (name, ropepatch.is_enabled())))
            return f"model:{name}", f"tokenizer:{name}"

        self.models = SimpleNamespace(unload_model=unload_model, load_model=load_model)


@pytest.mark.parametrize("keep_model_name", [True, False], ids=["v2+", "v1"])
def test_setup_enables_then_reloads_a_model_loaded_before_it(tmp_path: Path, keep_model_name: bool) -> None:
    model(tmp_path / "models" / "tiny", rope_scaling=YARN, max_position_embeddings=16384)
    host = Webui("tiny", keep_model_name=keep_model_name)
    host.shared.args = SimpleNamespace(model_dir=str(tmp_path / "models"))
    assert webui.setup(webui.OverrideStore(tmp_path / "o.json"), host.shared, host.models) is True
    assert host.calls == [("unload", True if keep_model_name else None), ("load", ("tiny", True))]
    assert host.shared.model == "model:tiny" and host.shared.model_name == "tiny"


def test_setup_reloads_at_most_once_per_process(tmp_path: Path) -> None:
    # the webui runs an extension's setup() again when it rebuilds its interface (a user extension is
    # imported as a new module each time): the start-up model must not be loaded a third time
    model(tmp_path / "models" / "tiny", rope_scaling=YARN, max_position_embeddings=16384)
    host = Webui("tiny")
    host.shared.args = SimpleNamespace(model_dir=str(tmp_path / "models"))
    store = webui.OverrideStore(tmp_path / "o.json")
    assert webui.setup(store, host.shared, host.models) is True
    assert webui.setup(store, host.shared, host.models) is False
    assert [c[0] for c in host.calls] == ["unload", "load"]


def test_setup_does_not_reload_a_model_built_with_ropepatch_enabled(tmp_path: Path) -> None:
    # `ropepatch run -- python server.py --model X` (or the .pth hook): enabled before the first load
    host = Webui("tiny")
    ropepatch.enable()
    assert webui.setup(webui.OverrideStore(tmp_path / "o.json"), host.shared, host.models) is False
    assert host.calls == [] and ropepatch.is_enabled()


def test_setup_does_not_reload_a_model_that_needs_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    model(models / "plain")
    host = Webui("plain")
    host.shared.args = SimpleNamespace(model_dir=str(models))
    assert webui.setup(webui.OverrideStore(tmp_path / "o.json"), host.shared, host.models) is False
    assert host.calls == []


def test_setup_reloads_a_scaled_model_built_before_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    model(models / "yarn", rope_scaling=YARN, max_position_embeddings=16384)
    host = Webui("yarn")  # shared.model is not a transformers model: its frequencies cannot be checked
    host.shared.args = SimpleNamespace(model_dir=str(models))
    assert webui.setup(webui.OverrideStore(tmp_path / "o.json"), host.shared, host.models) is True
    assert [c[0] for c in host.calls] == ["unload", "load"]


def test_setup_without_a_model_only_enables(tmp_path: Path) -> None:
    host = Webui(None)
    assert webui.setup(webui.OverrideStore(tmp_path / "o.json"), host.shared, host.models) is False
    assert host.calls == [] and ropepatch.is_enabled()


def test_panel_data_shows_method_contexts_and_provenance(tmp_path: Path) -> None:
    path = model(tmp_path / "models" / "yarn-tiny", rope_scaling=YARN, max_position_embeddings=16384)
    store = webui.OverrideStore(tmp_path / "o.json")
    webui.enable_with_store(store)
    data = webui.panel_data(str(path), "yarn-tiny", store)
    assert (data["method"], data["factor"], data["original_context"], data["effective_context"]) == (
        "yarn",
        4.0,
        4096,
        16384,
    )
    assert data["provenance"]["factor"] == "config.json:rope_scaling.factor"
    text = webui.panel_markdown(data)
    assert "| method | yarn | config.json:rope_scaling.rope_type |" in text
    assert "| effective context | 16384 |" in text
    store.set("yarn-tiny", {"method": "ntk", "alpha": 3})
    webui.enable_with_store(store)
    data = webui.panel_data(str(path), "yarn-tiny", store)
    assert data["method"] == "ntk" and data["alpha"] == 3.0 and data["overrides"] == {"method": "ntk", "alpha": 3.0}
    text = webui.panel_markdown(data)
    assert "Overrides saved for this model:" in text and "method=ntk" in text and "alpha=3.0" in text
    assert webui.panel_data(None, None, store)["error"] == "no model loaded"


def test_save_rejects_an_incomplete_combination_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = model(tmp_path / "m" / "tiny")
    store = webui.OverrideStore(tmp_path / "o.json")
    store.set("tiny", {"method": "linear", "factor": 2})
    reloads: list[bool] = []
    ctx = webui.PanelContext(store, lambda: ("tiny", str(path)), lambda: reloads.append(True) or True)
    webui.enable_with_store(store)
    text, *_ = webui.save_overrides(ctx, "ntk", None, None, None)  # ntk without alpha or factor
    assert text.startswith("**ropepatch**: not saved:") and "alpha" in text
    assert store.get("tiny") == {"method": "linear", "factor": 2.0} and reloads == []
    text, method, factor, alpha, original = webui.save_overrides(ctx, "ntk", 0, 2, 0)
    assert reloads == [True] and (method, alpha) == ("ntk", 2.0) and "model reloaded" in text


def test_verify_model_reads_transformers_rotary_embeddings(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=32,
        max_position_embeddings=16384,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, **{k: v for k, v in YARN.items() if k != "rope_type"}},
    )
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(config)
    from ropepatch.detection import detect

    spec = detect(config)
    result = webui.verify_model(hf_model, spec)  # transformers computes YaRN itself: it must match
    assert result["checked"] >= 1 and result["matches"], result
    wrong = webui.verify_model(hf_model, spec.replace(factor=8.0))
    assert not wrong["matches"] and wrong["max_rel_error"] > 0.5
    assert webui.verify_model(object(), spec) == {"checked": 0}


def test_a_panel_override_of_the_checkpoints_own_method_reaches_the_loaded_model(tmp_path: Path) -> None:
    """Saved in the panel: factor 8 for a yarn x4 checkpoint; the model the webui loads then runs yarn x8."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def tiny(rope: dict[str, Any]) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=32,
            max_position_embeddings=16384,
            rope_parameters={"rope_theta": 1e4, **rope},
        )

    folder = tmp_path / "models" / "tiny-yarn"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny(YARN)).save_pretrained(folder)
    store = webui.OverrideStore(tmp_path / "overrides.json")
    store.set("tiny-yarn", {"method": "yarn", "factor": 8})
    webui.enable_with_store(store)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    data = webui.panel_data(folder, "tiny-yarn", store)
    assert (data["method"], data["factor"], data["effective_context"]) == ("yarn", 8.0, 32768)
    rot = next(m for m in loaded.modules() if "RotaryEmbedding" in type(m).__name__)
    inv, attention = ROPE_INIT_FUNCTIONS["yarn"](tiny({**YARN, "factor": 8.0}), "cpu")
    assert torch.allclose(rot.inv_freq, inv, rtol=1e-6, atol=0) and rot.attention_scaling == attention
    spec = ropepatch.runtime.current().spec_for(folder)
    assert webui.verify_model(loaded, spec)["matches"]
