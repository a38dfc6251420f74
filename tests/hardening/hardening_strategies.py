"""Hypothesis strategies for hostile RoPE metadata: config dicts, config.json bytes, GGUF headers,
override strings and spec dicts.

Most inputs start from a realistic seed of one dialect (transformers rope_scaling / rope_parameters,
Qwen-1, DeepSeek and gpt-oss native keys, Meta params, GGUF keys) and are then mutated: values
replaced by wrong types, NaN, infinities, zero, negatives, huge integers; keys dropped, added,
moved between dialects or nested per layer type; factor lists of the wrong length; unicode and
deep nesting. Purely random JSON trees over the same key vocabulary cover the rest.
"""

from __future__ import annotations

import json
import math
from typing import Any

import hardening_kit as kit
from hypothesis import strategies as st

# -- vocabulary ------------------------------------------------------------------------------
TOP_KEYS = [
    "model_type", "_name_or_path", "name_or_path", "rope_theta", "rotary_emb_base", "rotary_base", "rope_base",
    "rope_ratio", "head_dim", "kv_channels", "hidden_size", "n_embd", "n_embed", "d_model", "dim",
    "num_attention_heads", "n_head", "n_heads", "num_heads", "qk_rope_head_dim", "rotary_dim", "rotary_emb_dim",
    "partial_rotary_factor", "rotary_pct", "rotary_emb_fraction", "max_position_embeddings", "n_positions",
    "max_sequence_length", "n_ctx", "original_max_position_embeddings", "rope_scaling", "rope_parameters",
    "text_config", "seq_length", "use_dynamic_ntk", "use_logn_attn", "alibi", "position_embedding_type",
    "original_seq_len", "rope_factor", "max_seq_len", "beta_fast", "beta_slow", "mscale",
    "initial_context_length", "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta", "use_scaled_rope",
    "scale_factor", "general.architecture", "general.name", "auto_map",
]  # fmt: skip
ROPE_KEYS = [
    "type", "rope_type", "factor", "original_max_position_embeddings", "rope_theta", "partial_rotary_factor",
    "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate", "finetuned",
    "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "alpha", "alpha_scaler", "beta_0",
    "beta_1", "gamma_0", "gamma_1", "ntk_factor", "extrapolation_factor", "use_logn_attn", "mrope_section",
    "long_mscale", "short_mscale", "rope_theta",
]  # fmt: skip
METHOD_NAMES = [
    "default", "none", "linear", "dynamic", "yarn", "llama3", "longrope", "su", "mrope", "ntk", "ntk-alpha",
    "dynamic-yarn", "part-ntk", "ntk-by-parts", "qwen-dynamic-ntk", "ntk-margin", "ntk-yarn",
    "dynamic-ntk-unclamped", "deepseek_yarn", "YARN", " linear ", "yarm", "", "proportional", "llama-3",
    "pi", "rope", "Dynamic_NTK",
]  # fmt: skip
MODEL_NAMES = [
    "TheBloke/Llama-2-13B-SuperHOT-8K", "bhenrym14/airoboros-33b-gpt4-1.4.1-PI-8192", "amazon/FalconLite",
    "amazon/FalconLite2", "lightonai/alfred-40b-1023", "x/superhot-99999999999999999999k", "-pi-0k",
    "x/superhot-0k", "models--org--name", "llama2-superhot-16k", "Qwen/Qwen3-0.6B",
]  # fmt: skip
LAYER_TYPES = ["full_attention", "sliding_attention", "chunked_attention"]
GGUF_ARCHS = ["llama", "deepseek2", "qwen2", "phi3", "gemma3", ""]

NAN, INF = math.nan, math.inf


def rarely(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws.

    The rare branch sits on the *largest* value: hypothesis favours small and all-zero choices,
    so putting corruption on 0 would corrupt most inputs and leave few valid ones to check.
    """
    return draw(st.integers(0, n - 1)) == n - 1


# -- values --------------------------------------------------------------------------------------
HOSTILE_SCALARS = [
    0, -1, 1, 2, 3, 4, 7, 8, 16, 32, 64, 128, 4096, 8192, 131072, 0.5, 1.0, 1e-300, 5e-324, 1e308, -0.0,
    NAN, INF, -INF, 2**31, 2**53 + 1, 2**63, 2**64, 10**20, 10**308, 10**309, 10**400, True, False, None,
    "", "4", "abc", "nan", "inf", "1e999", "\uff14", " 8 ", "0x10", "\u00e9\u00e8", "\ud7ff",
]  # fmt: skip

realistic_int = st.integers(min_value=1, max_value=1 << 18)
realistic_float = st.floats(min_value=0.01, max_value=1e7, allow_nan=False, allow_infinity=False)
hostile_scalar = st.one_of(
    st.sampled_from(HOSTILE_SCALARS),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
scalar = st.one_of(realistic_int, realistic_float, hostile_scalar, st.sampled_from(METHOD_NAMES))


def factor_list(size: int | None = None) -> st.SearchStrategy[list[Any]]:
    """A per-dimension factor list: usually the right shape, sometimes not, sometimes hostile elements."""
    element = st.one_of(realistic_float, st.sampled_from([1.0, 0.0, -1.0, NAN, INF, 1e308, True, "2"]))
    if size is None:
        return st.lists(element, max_size=70)
    return st.one_of(
        st.lists(st.floats(0.5, 64.0), min_size=size, max_size=size),
        st.lists(element, min_size=max(0, size - 1), max_size=size + 1),
    )


json_leaf = st.one_of(scalar, factor_list())
json_tree = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(TOP_KEYS + ROPE_KEYS) | st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=12,
)
value = st.one_of(scalar, scalar, scalar, factor_list(), json_tree)


@st.composite
def deep(draw: st.DrawFn, inner: Any = None) -> Any:
    """A value nested hundreds or thousands of levels deep (lists or single-key dicts)."""
    depth = draw(st.sampled_from([50, 500, 990, 1200, 3000]))
    obj: Any = inner if inner is not None else draw(scalar)
    as_dict = draw(st.booleans())
    for _ in range(depth):
        obj = {"rope_scaling": obj} if as_dict else [obj]
    return obj


# -- seeds: one realistic config per dialect ----------------------------------------------------
def _phi3(d: int = 8) -> dict[str, Any]:
    return {
        "model_type": "phi3",
        "hidden_size": d * 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "su", "short_factor": [1.0] * (d // 2), "long_factor": [1.5] * (d // 2)},
    }


SEEDS: list[dict[str, Any]] = [
    {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096},
    {"model_type": "llama", "head_dim": 128, "rope_theta": 500000.0, "max_position_embeddings": 131072,
     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}},
    {"model_type": "llama", "head_dim": 128, "max_position_embeddings": 16384,
     "rope_scaling": {"type": "linear", "factor": 4.0}},
    {"model_type": "internlm2", "head_dim": 128, "rope_theta": 1e6, "max_position_embeddings": 32768,
     "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    {"model_type": "llama", "head_dim": 128, "max_position_embeddings": 131072,
     "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "finetuned": True}},
    {"model_type": "deepseek_v3", "qk_rope_head_dim": 64, "max_position_embeddings": 163840,
     "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}},
    _phi3(),
    {"model_type": "qwen", "hidden_size": 4096, "num_attention_heads": 32, "seq_length": 2048,
     "use_dynamic_ntk": True, "use_logn_attn": True, "rotary_emb_base": 10000},
    {"original_seq_len": 4096, "rope_factor": 40, "max_seq_len": 16384, "qk_rope_head_dim": 64, "beta_fast": 32,
     "beta_slow": 1, "mscale": 1.0},
    {"initial_context_length": 4096, "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0,
     "head_dim": 64, "rope_theta": 150000},
    {"dim": 4096, "n_heads": 32, "rope_theta": 500000.0, "use_scaled_rope": True},
    {"model_type": "gemma3_text", "head_dim": 256, "max_position_embeddings": 131072,
     "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "head_dim": 256,
                                              "rope_scaling": {"rope_type": "linear", "factor": 8.0}}},
    {"model_type": "llama", "hidden_size": 5120, "num_attention_heads": 40, "max_position_embeddings": 16384,
     "original_max_position_embeddings": 4096},
    {"model_type": "llama", "_name_or_path": "TheBloke/Llama-2-13B-SuperHOT-8K", "hidden_size": 5120,
     "num_attention_heads": 40},
    {"model_type": "falcon", "_name_or_path": "amazon/FalconLite", "hidden_size": 4544, "num_attention_heads": 71},
    {"model_type": "mpt", "alibi": True, "max_seq_len": 2048},
    {"model_type": "gpt_neox", "hidden_size": 2560, "num_attention_heads": 32, "rotary_pct": 0.25,
     "max_position_embeddings": 2048, "rope_scaling": {"type": "ntk", "alpha": 2.0}},
    {"model_type": "llama", "head_dim": 64, "max_position_embeddings": 8192,
     "rope_scaling": {"rope_type": "part-ntk", "factor": 4, "original_max_position_embeddings": 2048}},
    {"model_type": "llama", "head_dim": 64, "max_position_embeddings": 8192,
     "rope_scaling": {"rope_type": "dynamic-ntk-unclamped", "original_max_position_embeddings": 2048}},
]  # fmt: skip


# -- config dict mutations ----------------------------------------------------------------------
def _rope_container(cfg: dict[str, Any], draw: st.DrawFn) -> dict[str, Any]:
    """A dict where rope keys live (creating one when the seed has none)."""
    places: list[dict[str, Any]] = []
    for key in ("rope_scaling", "rope_parameters"):
        rd = cfg.get(key)
        if isinstance(rd, dict):
            places.append(rd)
            places.extend(v for v in rd.values() if isinstance(v, dict))
    text = cfg.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("rope_scaling"), dict):
        places.append(text["rope_scaling"])
    if not places:
        key = draw(st.sampled_from(["rope_scaling", "rope_parameters"]))
        cfg[key] = {"rope_type": draw(st.sampled_from(METHOD_NAMES))}
        places.append(cfg[key])
    return draw(st.sampled_from(places))


@st.composite
def mutate(draw: st.DrawFn, cfg: dict[str, Any]) -> dict[str, Any]:
    """Apply one hostile edit to ``cfg`` (in place) and return it."""
    op = draw(
        st.sampled_from(
            ["set_top", "set_rope", "set_rope", "drop", "nest_layers", "text_config", "mix_dialects",
             "factor_lists", "junk_container", "rename_type", "deep", "set_name"]
        )
    )  # fmt: skip
    if op == "set_top":
        cfg[draw(st.sampled_from(TOP_KEYS))] = draw(value)
    elif op == "set_rope":
        rd = _rope_container(cfg, draw)
        key = draw(st.sampled_from(ROPE_KEYS))
        rd[key] = (
            draw(st.sampled_from(METHOD_NAMES)) if key in ("type", "rope_type") and draw(st.booleans()) else draw(value)
        )
    elif op == "drop" and cfg:
        cfg.pop(draw(st.sampled_from(sorted(cfg))), None)
    elif op == "nest_layers":
        rd = cfg.pop("rope_scaling", None) or cfg.pop("rope_parameters", None) or {"rope_type": "yarn", "factor": 4}
        layers = draw(st.lists(st.sampled_from(LAYER_TYPES), min_size=1, max_size=3, unique=True))
        cfg["rope_parameters"] = {lt: (rd if i == 0 else {"rope_type": draw(st.sampled_from(METHOD_NAMES))})
                                  for i, lt in enumerate(layers)}  # fmt: skip
    elif op == "text_config":
        inner = {k: cfg.pop(k) for k in list(cfg) if k != "model_type" and draw(st.booleans())}
        cfg["text_config"] = inner if not rarely(draw, 5) else draw(value)
    elif op == "mix_dialects":
        other = draw(st.sampled_from(SEEDS))
        for k, v in json.loads(json.dumps(other)).items():
            if draw(st.booleans()):
                cfg.setdefault(k, v)
    elif op == "factor_lists":
        rd = _rope_container(cfg, draw)
        size = draw(st.sampled_from([None, 2, 4, 32, 64]))
        rd[draw(st.sampled_from(["short_factor", "long_factor"]))] = draw(factor_list(size))
        rd.setdefault("type", draw(st.sampled_from(["longrope", "su", "yarn"])))
    elif op == "junk_container":
        cfg[draw(st.sampled_from(["rope_scaling", "rope_parameters", "text_config"]))] = draw(
            st.one_of(scalar, st.lists(scalar, max_size=3), st.just({}), st.just({"rope_type": None}))
        )
    elif op == "rename_type":
        rd = _rope_container(cfg, draw)
        both = draw(st.booleans())
        rd["type" if "rope_type" in rd else "rope_type"] = draw(st.sampled_from(METHOD_NAMES)) if both else None
    elif op == "deep":
        key = draw(st.sampled_from(["rope_scaling", "rope_parameters", "text_config", "factor", "head_dim"]))
        if key in ("rope_scaling", "rope_parameters", "text_config"):
            cfg[key] = draw(deep())
        else:
            _rope_container(cfg, draw)[key] = draw(deep())
    elif op == "set_name":
        cfg["_name_or_path"] = draw(st.sampled_from(MODEL_NAMES) | st.text(max_size=40))
    return cfg


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A config dict: a dialect seed with 0-6 hostile edits, or a random tree over the key vocabulary."""
    if rarely(draw, 6):
        tree = draw(st.dictionaries(st.sampled_from(TOP_KEYS), value, max_size=8))
        if draw(st.booleans()):
            tree["rope_scaling"] = draw(st.dictionaries(st.sampled_from(ROPE_KEYS), value, max_size=6))
        return tree
    cfg = json.loads(json.dumps(draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(0, 6))):
        cfg = draw(mutate(cfg))
    return cfg


# -- config.json bytes ------------------------------------------------------------------------
BIG_INT_TOKEN = "9" * 5000  # more digits than Python's int-from-string limit


def _dump(cfg: Any) -> str:
    try:
        return json.dumps(cfg, ensure_ascii=False)  # NaN / Infinity tokens stay in: json.loads accepts them
    except (ValueError, RecursionError):  # nested too deep to dump: the deep-bytes branch covers that
        return "{}"


@st.composite
def config_bytes(draw: st.DrawFn) -> bytes:
    """The bytes of a config.json: a dumped config dict, then maybe corrupted at the byte level."""
    if rarely(draw, 10):
        depth = draw(st.sampled_from([10, 900, 5000, 100000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"rope_scaling":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    text = _dump(draw(config_dicts()))
    op = draw(
        st.sampled_from(
            ["none", "none", "truncate", "flip", "insert", "bom", "bigint", "utf8", "trailing", "not_object", "dup_key"]
        )
    )
    data = text.encode("utf-8", "surrogatepass")
    if op == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif op == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    elif op == "bom":
        data = b"\xef\xbb\xbf" + data
    elif op == "bigint":
        key = draw(st.sampled_from(["factor", "rope_theta", "head_dim", "max_position_embeddings"]))
        sign = draw(st.sampled_from(["", "-"]))
        data = (text[:-1] + ("," if len(text) > 2 else "") + f'"{key}": {sign}{BIG_INT_TOKEN}' + "}").encode(
            "utf-8", "surrogatepass"
        )
    elif op == "utf8":
        data = data + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]))
    elif op == "trailing":
        data = data + b" , junk"
    elif op == "not_object":
        data = draw(st.sampled_from([b"[]", b"null", b"42", b'"config"', b"NaN", b""]))
    elif op == "dup_key":
        data = data.rstrip(b"}") + (b', "rope_scaling": {"type": "linear", "factor": -3}}' if len(data) > 2 else b"}")
    return data


# -- GGUF headers -------------------------------------------------------------------------------
def _gguf_value(vtype: int) -> st.SearchStrategy[Any]:
    if vtype in (kit.F32, kit.F64):
        return st.one_of(
            st.floats(width=32 if vtype == kit.F32 else 64), st.sampled_from([NAN, INF, -INF, 0.0, -1.0, 4.0, 1e6])
        )
    if vtype == kit.BOOL:
        return st.booleans()
    if vtype in kit.SCALAR_FMT:
        return st.one_of(st.integers(), st.sampled_from([0, 1, 2, 3, 64, 128, 4096, 2**32 - 1, 2**63 - 1, -1]))
    if vtype == kit.STRING:
        return st.one_of(
            st.sampled_from(["llama", "yarn", "linear", "none", "longrope", "su", "", "deepseek2"]),
            st.text(max_size=20),
            st.binary(max_size=8),
        )
    return st.just(None)


@st.composite
def gguf_value(draw: st.DrawFn, depth: int = 0) -> tuple[int, Any]:
    """(type id, value) with the type drawn first, arrays included."""
    vtype = draw(
        st.sampled_from([*kit.SCALAR_FMT, kit.STRING, kit.STRING, kit.ARRAY] + ([13, 99] if depth == 0 else []))
    )
    if vtype == kit.ARRAY:
        etype = draw(
            st.sampled_from([kit.F32, kit.I32, kit.U8, kit.STRING] + ([kit.ARRAY] if depth < 3 else []) + [13])
        )
        if etype == kit.ARRAY:
            items = [draw(gguf_value(depth + 1))[1] for _ in range(draw(st.integers(0, 3)))]
            inner = draw(st.sampled_from([kit.I32, kit.STRING]))
            items = [(inner, []) for _ in items]
        elif etype == 13:
            items = []
        else:
            items = draw(st.lists(_gguf_value(etype), max_size=6))
        return vtype, (etype, items)
    return vtype, draw(_gguf_value(vtype))


GGUF_ROPE_KEYS = {
    "rope.freq_base": kit.F32, "rope.dimension_count": kit.U32, "rope.scaling.type": kit.STRING,
    "rope.scaling.factor": kit.F32, "rope.scaling.original_context_length": kit.U32,
    "rope.scaling.finetuned": kit.BOOL, "rope.scaling.yarn_log_multiplier": kit.F32,
    "rope.scaling.attn_factor": kit.F32, "rope.scale_linear": kit.F32, "context_length": kit.U32,
    "embedding_length": kit.U32, "attention.head_count": kit.U32, "attention.head_count_kv": kit.U32,
    "attention.key_length": kit.U32,
}  # fmt: skip


GGUF_REALISTIC = {
    "rope.freq_base": st.floats(1.5, 1e7), "rope.dimension_count": st.sampled_from([32, 64, 80, 96, 128]),
    "rope.scaling.type": st.sampled_from(["yarn", "linear", "none"]), "rope.scaling.factor": st.floats(1.0, 64.0),
    "rope.scaling.original_context_length": st.sampled_from([2048, 4096, 8192]),
    "rope.scaling.finetuned": st.booleans(), "rope.scaling.yarn_log_multiplier": st.floats(0.0, 0.2),
    "rope.scaling.attn_factor": st.floats(0.5, 2.0), "rope.scale_linear": st.floats(1.0, 8.0),
    "context_length": st.sampled_from([4096, 32768, 131072]), "embedding_length": st.sampled_from([4096, 5120]),
    "attention.head_count": st.sampled_from([32, 40]), "attention.head_count_kv": st.sampled_from([8, 32]),
    "attention.key_length": st.sampled_from([64, 128]),
}  # fmt: skip


@st.composite
def gguf_kvs(draw: st.DrawFn) -> list[tuple[str | bytes, int, Any]]:
    """Key/value entries of a GGUF header, mostly the RoPE keys with their usual types."""
    arch = draw(st.sampled_from(GGUF_ARCHS))
    kvs: list[tuple[str | bytes, int, Any]] = []
    if not rarely(draw, 10):
        kvs.append(
            ("general.architecture", kit.STRING, arch)
            if not rarely(draw, 10)
            else ("general.architecture", *draw(gguf_value()))
        )
    if draw(st.booleans()):
        kvs.append(("general.name", kit.STRING, draw(st.sampled_from(MODEL_NAMES) | st.text(max_size=30))))
    for suffix in draw(st.lists(st.sampled_from(sorted(GGUF_ROPE_KEYS)), max_size=8, unique=True)):
        key = f"{arch}.{suffix}"
        usual = GGUF_ROPE_KEYS[suffix]
        roll = draw(st.integers(0, 5))
        if roll >= 3:
            kvs.append((key, usual, draw(GGUF_REALISTIC[suffix])))
        elif roll >= 1:
            kvs.append((key, usual, draw(_gguf_value(usual))))
        else:
            kvs.append((key, *draw(gguf_value())))
    if draw(st.booleans()):
        kvs.append(("tokenizer.ggml.tokens", kit.ARRAY, (kit.STRING, draw(st.lists(st.text(max_size=5), max_size=20)))))
    if draw(st.booleans()):
        kvs.append((draw(st.text(max_size=20) | st.binary(max_size=6)), *draw(gguf_value())))
    return draw(st.permutations(kvs))


HUGE_LENGTHS = [2**60, 2**64 - 1, 2**63, 2**32 - 1, 2**31, 1 << 40, 65536, 65537]


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    """The bytes of a GGUF header, valid or corrupted in the ways a hostile or broken file is."""
    kvs = draw(gguf_kvs())
    version = draw(st.sampled_from([3] * 6 + [2, 1, 0, 4, 2**32 - 1]))
    dup = rarely(draw, 8) and kvs
    if dup:
        kvs = kvs + [kvs[draw(st.integers(0, len(kvs) - 1))]]
    n_kv = None
    if rarely(draw, 8):
        n_kv = draw(st.sampled_from([0, len(kvs) + 1, 2**60, 2**64 - 1]))
    n_tensors = draw(st.sampled_from([0, 0, 1, 2**64 - 1])) if version != 1 else 0
    magic = b"GGUF" if not rarely(draw, 16) else draw(st.sampled_from([b"GGUf", b"FUGG", b"\0\0\0\0", b"GGU"]))
    img = kit.gguf_header(kvs, version=version, magic=magic, n_tensors=n_tensors, n_kv=n_kv)
    data = img.data
    op = draw(st.sampled_from(["none"] * 5 + ["truncate", "huge_length", "huge_length", "flip", "bad_type"]))
    if op == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif op == "huge_length" and img.lengths:
        offset, width, _ = draw(st.sampled_from(img.lengths))
        n = draw(st.sampled_from(HUGE_LENGTHS))
        data[offset : offset + width] = (n & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    elif op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    elif op == "bad_type" and img.entries:
        start = draw(st.sampled_from(img.entries))
        key_len = int.from_bytes(data[start : start + (8 if version != 1 else 4)], "little")
        at = start + (8 if version != 1 else 4) + key_len
        if at + 4 <= len(data):
            data[at : at + 4] = draw(st.sampled_from([13, 255, 2**32 - 1])).to_bytes(4, "little")
    return bytes(data)


# -- overrides ------------------------------------------------------------------------------
OVERRIDE_KEYS = [
    "method", "factor", "scale", "original", "original_context", "original_max_position_embeddings",
    "max_position_embeddings", "rope_theta", "theta", "base", "rotary_dim", "head_dim", "target_context",
    "alpha", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate", "finetuned",
    "short_factor", "long_factor", "low_freq_factor", "high_freq_factor", "use_logn_attn", "alpha_scaler",
    "facter", "Factor", "orignal", "target-context", "", " factor ",
]  # fmt: skip
OVERRIDE_VALUES = [
    "4", "2.5", "0", "-1", "nan", "inf", "-inf", "1e400", "true", "false", "none", "null", "yes", "abc", "",
    "[1.0, 2.0]", "[1, 2, 3, 4]", "[", "[[[[", "[" * 3000, "[" + "9" * 5000 + "]", "9" * 5000, "[1.0,",
    "\u0664", "0x10", "1_000", "[NaN]", "[true]", "{}",
]  # fmt: skip


VALID_PAIRS = {
    "factor": st.sampled_from(["2", "4", "8.0", "32", "1.5"]),
    "scale": st.sampled_from(["2", "4"]),
    "original": st.sampled_from(["2048", "4096", "8192"]),
    "original_max_position_embeddings": st.sampled_from(["4096", "32768"]),
    "max_position_embeddings": st.sampled_from(["16384", "131072"]),
    "rope_theta": st.sampled_from(["10000", "1e6", "500000.0"]),
    "rotary_dim": st.sampled_from(["64", "128"]),
    "target_context": st.sampled_from(["65536", "131072", "1024"]),
    "alpha": st.sampled_from(["2", "4.5"]),
    "beta_fast": st.sampled_from(["32", "16"]),
    "beta_slow": st.sampled_from(["1", "2"]),
    "mscale": st.sampled_from(["1.0", "0.707"]),
    "mscale_all_dim": st.sampled_from(["1.0"]),
    "attention_factor": st.sampled_from(["1.19", "0.1"]),
    "truncate": st.sampled_from(["true", "false"]),
    "finetuned": st.sampled_from(["true", "false", "1"]),
    "low_freq_factor": st.sampled_from(["1", "2"]),
    "high_freq_factor": st.sampled_from(["4"]),
    "short_factor": st.sampled_from(["[1.0, 1.0]", "[1,1,1,1]", "[1.0]"]),
    "long_factor": st.sampled_from(["[2.0, 3.0]", "[4,4,4,4]"]),
    "use_logn_attn": st.sampled_from(["true"]),
    "alpha_scaler": st.sampled_from(["0.25", "1"]),
}
VALID_METHODS = ["linear", "yarn", "dynamic", "ntk", "llama3", "longrope", "part-ntk", "dynamic-yarn", "ntk-margin", ""]


@st.composite
def override_text(draw: st.DrawFn) -> str:
    """A ROPEPATCH value: entries of [GLOB@]METHOD[:k=v,...]; mostly well-formed, with typos and junk mixed in."""
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        parts = []
        if rarely(draw, 4):
            parts.append(draw(st.sampled_from(["Qwen/*", "*", "[", "*superhot*", "", "a@b"])) + "@")
        method = draw(st.sampled_from(VALID_METHODS)) if not rarely(draw, 5) else draw(st.sampled_from(METHOD_NAMES))
        kvs = []
        used: set[str] = set()
        for _ in range(draw(st.integers(0, 3))):
            if not rarely(draw, 4):
                k = draw(st.sampled_from(sorted(VALID_PAIRS)))
                if k in used:
                    continue
                used.add(k)
                kvs.append(f"{k}={draw(VALID_PAIRS[k])}")
                continue
            k = draw(st.sampled_from(OVERRIDE_KEYS))
            v = draw(st.sampled_from(OVERRIDE_VALUES) | st.text(max_size=6))
            kvs.append(f"{k}={v}" if not rarely(draw, 10) else draw(st.sampled_from([k, v, "=", ",", ":"])))
        body = ",".join(kvs)
        parts.append(f"{method}:{body}" if method and body else (method or body))
        entries.append("".join(parts))
    text = ";".join(entries)
    if rarely(draw, 10):
        text = draw(st.text(alphabet=st.sampled_from(list("yarn:factor=4,;@*[]{}.-_ \u00e9\n")), max_size=40))
    return text


@st.composite
def override_mappings(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword overrides: mostly valid keys with values of the right kind, sometimes junk."""
    out: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 3))):
        if not rarely(draw, 4):
            k = draw(st.sampled_from(sorted(VALID_PAIRS)))
            out[k] = json.loads(draw(VALID_PAIRS[k]))
        else:
            out[draw(st.sampled_from(OVERRIDE_KEYS) | st.text(max_size=6))] = draw(
                st.one_of(scalar, st.lists(scalar, max_size=3), st.sampled_from(METHOD_NAMES))
            )
    if not rarely(draw, 3):
        out["method"] = draw(st.sampled_from(VALID_METHODS[:-1]))
    return out


# -- spec dicts -------------------------------------------------------------------------------
SPEC_FIELDS = [
    "method", "rope_theta", "rotary_dim", "factor", "original_max_position_embeddings", "max_position_embeddings",
    "params", "provenance", "warnings", "notes", "head_dim", "source", "model", "schema",
]  # fmt: skip


VALID_SPECS: list[dict[str, Any]] = [
    {"method": "default", "rotary_dim": 128, "rope_theta": 1e6},
    {"method": "linear", "rotary_dim": 128, "factor": 4.0},
    {"method": "ntk", "rotary_dim": 64, "params": {"alpha": 2.0}},
    {"method": "dynamic", "rotary_dim": 128, "factor": 2.0, "max_position_embeddings": 4096},
    {"method": "yarn", "rotary_dim": 64, "factor": 40.0, "original_max_position_embeddings": 4096,
     "params": {"mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}},
    {"method": "dynamic-yarn", "rotary_dim": 128, "factor": 16.0, "original_max_position_embeddings": 8192,
     "params": {"finetuned": True}},
    {"method": "llama3", "rotary_dim": 128, "factor": 8.0, "original_max_position_embeddings": 8192,
     "max_position_embeddings": 131072, "rope_theta": 500000.0},
    {"method": "longrope", "rotary_dim": 8, "original_max_position_embeddings": 4096, "max_position_embeddings": 131072,
     "params": {"short_factor": [1.0] * 4, "long_factor": [2.0, 3.0, 4.0, 5.0]}},
    {"method": "part-ntk", "rotary_dim": 128, "factor": 4.0, "original_max_position_embeddings": 4096},
    {"method": "qwen-dynamic-ntk", "rotary_dim": 128, "original_max_position_embeddings": 2048,
     "params": {"use_logn_attn": True}},
    {"method": "dynamic-ntk-unclamped", "rotary_dim": 64, "original_max_position_embeddings": 2048,
     "params": {"alpha_scaler": 0.25}},
    {"method": "ntk-yarn", "rotary_dim": 64, "factor": 4.0},
]  # fmt: skip


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A dict for RopeSpec.from_dict: a valid spec of each method, then 0-4 hostile edits."""
    out: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(VALID_SPECS))))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(SPEC_FIELDS))
        if name == "method":
            out[name] = draw(st.sampled_from(METHOD_NAMES) | scalar)
        elif name == "params":
            params = out.setdefault("params", {}) if isinstance(out.get("params"), dict) else {}
            if rarely(draw, 5):
                out[name] = draw(st.one_of(scalar, st.lists(scalar, max_size=2)))
            else:
                params[draw(st.sampled_from(ROPE_KEYS))] = draw(value)
                out[name] = params
        elif name == "provenance":
            out[name] = draw(
                st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | scalar, max_size=3), scalar)
            )
        elif name in ("warnings", "notes"):
            out[name] = draw(st.one_of(st.lists(st.text(max_size=5) | scalar, max_size=3), scalar))
        elif name in ("source", "model"):
            out[name] = draw(st.one_of(st.text(max_size=10), scalar))
        elif name == "schema":
            out[name] = draw(st.sampled_from(["ropepatch-spec/1", "ropepatch-spec/2", None, 1]))
        elif name == "rotary_dim":
            out[name] = draw(st.one_of(st.sampled_from([2, 4, 6, 8, 64, 128, 1 << 20, 1 << 40]), scalar))
        else:
            out[name] = draw(st.one_of(realistic_int, realistic_float, hostile_scalar))
    if rarely(draw, 10):
        out.pop("method", None)
    if rarely(draw, 10):
        out[draw(st.text(max_size=6))] = draw(scalar)
    return out
