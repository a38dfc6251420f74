"""Run TGI's own rotary layer on CPU, natively and under ropepatch, against the reference tables.

Usage: ``python compat/tgi/check_tgi.py TGI_CHECKOUT [--json OUT]`` where TGI_CHECKOUT is a
text-generation-inference source tree (its ``server/`` folder is used). Needs torch and loguru.

TGI's server is not on the package registries and its package ``__init__`` files pull in CUDA
kernels, gRPC and the model zoo. This script registers ``text_generation_server``, ``.utils``
and ``.layers`` as empty package modules whose ``__path__`` is the source folder, so only
``layers/rotary.py`` and what it imports load; and it writes a ``dist-info`` for the source's
declared version so ropepatch's version gate sees TGI as installed, as it is in TGI's image.
Then ``ropepatch.enable()`` patches it exactly as in a shard.

For every case it builds the layer with ``PositionRotaryEmbedding.static()`` (or a subclass's),
asks ``get_cos_sin()`` for the table as a TGI forward pass does, and compares it with the
reference: transformers' own ``ROPE_INIT_FUNCTIONS`` where transformers has the method, the
published formula otherwise (methods.md). ``forward()`` has no CPU path in TGI (it raises).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import types
from pathlib import Path

import torch

DIM = 64
HIDDEN = 512
HEADS = 8
ROWS = 8192  # the shard's MAX_TOTAL_TOKENS


def bypass_package_inits(server: Path) -> None:
    root = server / "text_generation_server"
    for name, folder in (("text_generation_server", root), ("text_generation_server.utils", root / "utils"),
                         ("text_generation_server.layers", root / "layers")):  # fmt: skip
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module


def declare_installed(server: Path) -> str:
    """A dist-info for text-generation-server at the version the source declares; returns it."""
    text = (server / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    site = Path(tempfile.mkdtemp(prefix="tgi-dist-"))
    info = site / f"text_generation_server-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: text-generation-server\nVersion: {version}\n")
    sys.path.insert(0, str(site))
    return version


def llama_config(rope: dict | None, max_pos: int = 2048):
    from transformers import LlamaConfig

    params = {"rope_theta": 10000.0, **(rope or {"rope_type": "default"})}
    config = LlamaConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, max_position_embeddings=max_pos, rope_parameters=params
    )
    # TGI's modelling code reads the legacy attribute (transformers 4.x configs): give it the same dict
    config.rope_scaling = dict(params) if rope else None
    config._name_or_path = "compat/tiny-llama"
    return config


def reference(case: dict, rows: int) -> torch.Tensor:
    """The reference cos table (attention factor included), float32 angles."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = case["rope"] or {"rope_type": "default"}
    kind = rope["rope_type"]
    if kind in ("linear", "yarn", "llama3"):
        inv, attention = ROPE_INIT_FUNCTIONS[kind](llama_config(rope, case.get("max_pos", 2048)), "cpu")
    elif kind == "dynamic":  # evaluated at the served length, as both TGI's warm-up and ropepatch do
        inv, attention = ROPE_INIT_FUNCTIONS[kind](llama_config(rope, case.get("max_pos", 2048)), "cpu", seq_len=rows)
    elif kind == "ntk-yarn":  # methods.md §7: b' = b (s+1)^(d/(d-2)), cos/sin x (1 + 0.1 ln s)
        s = rope["factor"]
        base = 10000.0 * (s + 1) ** (DIM / (DIM - 2))
        inv = torch.tensor([base ** (-2 * i / DIM) for i in range(DIM // 2)], dtype=torch.float64).float()
        attention = 1 + 0.1 * math.log(s)
    else:
        inv = torch.tensor([10000.0 ** (-2 * i / DIM) for i in range(DIM // 2)], dtype=torch.float64).float()
        attention = 1.0
    freqs = torch.outer(torch.arange(rows, dtype=torch.float32), inv.float())
    return freqs.cos() * attention


CASES = [
    {"name": "default (control)", "rope": None},
    {"name": "linear factor 4", "rope": {"rope_type": "linear", "factor": 4.0}},
    {"name": "yarn s=4 (defaults)", "rope": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, "max_pos": 8192},
    {"name": "yarn attention_factor 1.5", "rope": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "attention_factor": 1.5}, "max_pos": 8192},
    {"name": "yarn beta_fast 16 beta_slow 2", "rope": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "beta_fast": 16.0, "beta_slow": 2.0}, "max_pos": 8192},
    {"name": "dynamic factor 4", "rope": {"rope_type": "dynamic", "factor": 4.0}},
    {"name": "ntk-yarn s=4 (ropepatch only)", "rope": {"rope_type": "ntk-yarn", "factor": 4.0, "original_max_position_embeddings": 2048}},
]  # fmt: skip


def table(rotary_cls, case: dict) -> tuple[object, torch.Tensor]:
    config = llama_config(case["rope"], case.get("max_pos", 2048))
    layer = rotary_cls.static(config=config, dim=DIM, base=10000.0, device=torch.device("cpu"))
    positions = torch.arange(ROWS, dtype=torch.int64)
    cos, _sin = layer.get_cos_sin(positions, ROWS, torch.float32)
    return layer, cos.squeeze(1)


def run_cases(rotary, label: str) -> list[dict]:
    out = []

    # GPT-J's rotary is a subclass of TGI's class; static() must return a subclass of *it*
    class GPTJLike(rotary.PositionRotaryEmbedding):  # same shape as flash_gptj_modeling.GPTJRotary
        pass

    for case in CASES:
        row = {"case": case["name"], "mode": label}
        try:
            layer, cos = table(rotary.PositionRotaryEmbedding, case)
            ref = reference(case, ROWS)
            row["class"] = type(layer).__name__
            row["max_abs_dcos"] = float((cos - ref).abs().max())
            row["rows"] = int(layer._cos_cached.shape[0])
            sub, _ = table(GPTJLike, case)
            row["subclass_call_keeps_cls"] = isinstance(sub, GPTJLike)
        except Exception as exc:  # noqa: BLE001 - a compat record, not a test
            row["error"] = f"{type(exc).__name__}: {exc}"
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="text-generation-inference source tree")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    server = args.checkout / "server" if (args.checkout / "server").is_dir() else args.checkout
    os.environ["MAX_TOTAL_TOKENS"] = str(ROWS)
    os.environ.pop("ROPE_SCALING", None)
    os.environ.pop("ROPEPATCH", None)
    version = declare_installed(server)
    bypass_package_inits(server)

    import ropepatch
    from ropepatch.runtime import status

    report: dict = {"tgi_source_version": version, "torch": torch.__version__}
    from text_generation_server.layers import rotary  # TGI's own module, unpatched

    report["tgi_system"] = rotary.SYSTEM
    results = run_cases(rotary, "TGI native")
    ropepatch.enable()
    report["ropepatch_status"] = status()
    results += run_cases(rotary, "ropepatch")
    # the table is built once, at MAX_TOTAL_TOKENS: asking again for fewer rows reuses the tensor
    layer, _ = table(rotary.PositionRotaryEmbedding, CASES[1])
    ptr = layer._cos_cached.data_ptr()
    layer.get_cos_sin(torch.arange(16), 16, torch.float32)
    report["table_reused_after_warmup"] = layer._cos_cached.data_ptr() == ptr
    try:
        q = torch.zeros(2, HEADS, DIM)
        layer.forward(q, q.clone(), *layer.get_cos_sin(torch.arange(2), 2, torch.float32))
        report["forward_on_cpu"] = "ran"
    except Exception as exc:  # noqa: BLE001
        report["forward_on_cpu"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    # an override of the checkpoint's own method wins: the config says yarn x4, enable() says x8
    ropepatch.enable(method="yarn", factor=8.0)
    yarn = CASES[2]
    _, cos = table(rotary.PositionRotaryEmbedding, yarn)
    report["override_yarn_x8_max_abs_dcos"] = float(
        (cos - reference({**yarn, "rope": {**yarn["rope"], "factor": 8.0}}, ROWS)).abs().max()
    )
    report["override_vs_checkpoint_max_abs_dcos"] = float((cos - reference(yarn, ROWS)).abs().max())
    ropepatch.disable()
    report["restored_after_disable"] = "static" in vars(rotary.PositionRotaryEmbedding) and not getattr(
        vars(rotary.PositionRotaryEmbedding)["static"], "__ropepatch__", False
    )
    report["results"] = results
    print(f"TGI source version {version} (SYSTEM={report['tgi_system']}), torch {torch.__version__}")
    print("| case | TGI native max abs dcos | ropepatch max abs dcos | ropepatch class | rows | subclass keeps cls |")
    print("|---|---|---|---|---|---|")
    by_case: dict[str, dict] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["mode"]] = r
    for name, modes in by_case.items():
        n, p = modes.get("TGI native", {}), modes.get("ropepatch", {})
        fmt = lambda r: r.get("error") or f"{r['max_abs_dcos']:.3g}"  # noqa: E731
        print(
            f"| {name} | {fmt(n)} | {fmt(p)} | {p.get('class')} | {p.get('rows')} | {p.get('subclass_call_keeps_cls')} |"
        )
    for key in (
        "table_reused_after_warmup",
        "forward_on_cpu",
        "restored_after_disable",
        "override_yarn_x8_max_abs_dcos",
        "ropepatch_status",
    ):
        print(f"{key}: {report[key]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = all(
        r.get("max_abs_dcos", 1.0) < 2e-3 and r.get("subclass_call_keeps_cls")
        for r in results
        if r["mode"] == "ropepatch"
    )
    ok = ok and report["override_yarn_x8_max_abs_dcos"] < 2e-3
    return 0 if ok and report["restored_after_disable"] else 1


if __name__ == "__main__":
    sys.exit(main())
