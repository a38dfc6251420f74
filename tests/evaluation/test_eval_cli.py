"""``ropepatch eval`` end to end on a tiny random Llama, every method applied by the transformers adapter."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from eval_tiny import L0, hf_window_losses

from ropepatch.cli.main import main
from ropepatch.evaluation.perplexity import cut_windows
from ropepatch.evaluation.runner import LocalModel, read_rotary
from ropepatch.evaluation.variants import Variant
from ropepatch.registry import get_registry

pytestmark = pytest.mark.skipif(
    get_registry().adapters.get("transformers") is None,
    reason="needs ropepatch's transformers adapter (ropepatch/adapters/transformers/) registered",
)


def plain_inv_freq(d: int = 16, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def test_patch_strategy_applies_each_method_and_restores_plain_rope(tiny_dir):
    handle = LocalModel(tiny_dir)
    model = handle.apply(Variant("default", {"method": "default"}))
    inv, _ = read_rotary(model)
    assert torch.allclose(inv.double(), plain_inv_freq(), rtol=1e-6)
    model = handle.apply(Variant("linear", {"method": "linear", "factor": 4.0, "original_max_position_embeddings": L0}))
    inv, attention = read_rotary(model)
    assert torch.allclose(inv.double(), plain_inv_freq() / 4, rtol=1e-6)  # positions m -> m/4
    model = handle.apply(Variant("yarn", {"method": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}))
    _, attention = read_rotary(model)
    assert attention == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1, rel=1e-6)  # YaRN's mscale
    model = handle.apply(Variant("default", {"method": "default"}))
    inv, attention = read_rotary(model)
    assert torch.allclose(inv.double(), plain_inv_freq(), rtol=1e-6) and attention == 1.0


def test_cli_writes_tables_plots_and_matches_transformers_loss(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            str(tiny_dir),
            "--byte-level",
            "--text",
            str(text_file),
            "--methods",
            "default,linear,dynamic,yarn",
            "--lengths",
            "32,64",
            "--windows",
            "2",
            "--passkey",
            "--passkey-lengths",
            "256",
            "--depths",
            "0,1",
            "--trials",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["original_context"] == L0
    assert [v["label"] for v in results["variants"]] == ["default", "linear", "dynamic", "yarn"]
    assert all(v["ok"] for v in results["variants"]), results["variants"]
    rows = list(csv.DictReader((out / "perplexity.csv").open()))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"default", "linear", "dynamic", "yarn"}
    assert (out / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "passkey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.DictReader((out / "passkey.csv").open()))) == 4 * 2

    # plain RoPE's numbers are transformers' own loss on the same byte windows, unpatched
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = list(text_file.read_bytes())
    by = {(p["method"], p["length"]): p for p in results["perplexity"]}
    for length in (32, 64):
        ref = hf_window_losses(plain, cut_windows(ids, length, max_windows=2))
        assert by[("default", length)]["nll"] == pytest.approx(sum(x for x, _ in ref) / 2, rel=1e-5)
    # within the trained length dynamic NTK is plain RoPE; linear is not
    assert by[("dynamic", 32)]["nll"] == pytest.approx(by[("default", 32)]["nll"], rel=1e-6)
    assert abs(by[("linear", 32)]["nll"] - by[("default", 32)]["nll"]) > 1e-4
    printed = capsys.readouterr().out
    assert "| method | 32 | 64 |" in printed and "Passkey" in printed

    # every row names the spec it measured: the longest length 64 over the model's 32 gives factor 2
    expected = {
        "default": "default, 32",
        "linear": "linear x2, 32 -> 64",
        "dynamic": "dynamic x2, 32 -> grows with input",  # the dynamic methods' own factor, 2
        "yarn": "yarn x2, 32 -> 64",
    }
    for v in results["variants"]:
        assert v["applied"]["label"] == expected[v["label"]]
    linear = next(v["applied"] for v in results["variants"] if v["label"] == "linear")
    assert (linear["method"], linear["factor"], linear["original_context"], linear["effective_context"]) == (
        "linear",
        2.0,
        L0,
        2 * L0,
    )
    assert all(p["applied"] == expected[p["method"]] for p in results["perplexity"] + results["passkey"])
    for name in ("perplexity.csv", "passkey.csv"):
        assert all(r["applied"] == expected[r["method"]] for r in csv.DictReader((out / name).open()))
    assert "| yarn: yarn x2, 32 -> 64 |" in printed


def test_reload_strategy_gives_the_same_numbers(tiny_dir, text_file, tmp_path):
    args = [
        "eval",
        str(tiny_dir),
        "--byte-level",
        "--text",
        str(text_file),
        "--methods",
        "yarn,default",
        "--lengths",
        "64",
        "--windows",
        "2",
        "--no-progress",
        "--no-plots",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--strategy", "reload"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["perplexity"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["perplexity"]
    assert [p["method"] for p in a] == ["yarn", "default"]
    for x, y in zip(a, b, strict=True):
        assert x["nll"] == pytest.approx(y["nll"], rel=1e-6)


def test_cli_errors_are_one_line(tiny_dir, capsys):
    assert main(["eval", str(tiny_dir), "--byte-level", "--methods", "yarnn"]) == 2
    assert "did you mean 'yarn'" in capsys.readouterr().err
    assert main(["eval", "--endpoint", "http://127.0.0.1:9", "--lengths", "32"]) == 2
    assert "--api" in capsys.readouterr().err


def test_a_row_whose_model_differs_from_its_spec_says_so(tiny_dir):
    handle = LocalModel(tiny_dir)
    model = handle.apply(Variant("linear", {"method": "linear", "factor": 4.0, "original_max_position_embeddings": L0}))
    check = handle.check(
        model, Variant("linear", {"method": "linear", "factor": 4.0, "original_max_position_embeddings": L0})
    )
    assert check["ok"] and check["applied"]["label"] == "linear x4, 32 -> 128"
    # without an original context the checkpoint's 32 is read as the scaled one, from an unknown original
    # (linear's frequencies do not depend on it: the model is that spec too)
    check = handle.check(model, Variant("linear", {"method": "linear", "factor": 4.0}))
    assert check["ok"] and check["applied"]["label"] == "linear x4, ? -> 32"
    other = Variant("yarn", {"method": "yarn", "factor": 2.0, "original_max_position_embeddings": L0})
    check = handle.check(model, other)
    assert check["ok"] is False and check["applied"]["label"] == "yarn x2, 32 -> 64 [model differs]"


def test_plot_legends_name_the_applied_spec(tiny_dir, text_file, tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib", reason="the plots need matplotlib (the eval extra)")
    from matplotlib.figure import Figure

    seen: list[list[str]] = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        texts += [ax.get_title() for ax in fig.axes]
        seen.append(texts)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    assert matplotlib.get_backend()
    args = ["eval", str(tiny_dir), "--byte-level", "--text", str(text_file), "--methods", "default,ntk"]
    args += ["--lengths", "16,64", "--windows", "1", "--passkey", "--passkey-lengths", "256", "--depths", "0"]
    assert main([*args, "--trials", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    perplexity, passkey = seen
    assert perplexity[:2] == ["default: default, 32", "ntk: ntk x2, 32 -> 64"]
    assert "default\ndefault, 32" in passkey and "ntk\nntk x2, 32 -> 64" in passkey
