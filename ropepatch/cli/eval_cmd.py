"""``ropepatch eval MODEL``: loss by context length per scaling method, and passkey retrieval.

Local models get every method applied through the transformers adapter; ``--endpoint`` measures a
running TGI or vLLM (OpenAI-compatible) server instead, from its prompt log-probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ropepatch.errors import RopeConfigError

__all__ = ["add_parser", "run"]

DEFAULT_METHODS = "default,linear,ntk,dynamic,yarn"


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be at least 2, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths must lie in [0, 1], got {text!r}")
    return values


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="measure loss by context length (and passkey retrieval) for each RoPE scaling method",
        description=(
            "Score windows of several lengths cut from a text, once per scaling method (applied through "
            "ropepatch's transformers adapter), or against a running server with --endpoint. Writes "
            "results.json, perplexity.csv, passkey.csv and PNG plots to --out."
        ),
    )
    p.add_argument("model", nargs="?", help="checkpoint folder (with --endpoint: where to read the tokenizer)")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods; 'auto' = as detected (default: {DEFAULT_METHODS})",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=METHOD:k=v,...",
        help="one more line to compare, in $ROPEPATCH syntax (repeatable)",
    )
    p.add_argument("--lengths", type=_ints, help="context lengths in tokens (default: L0/2, L0, 2L0, 4L0, 8L0)")
    p.add_argument("--original", type=int, help="the context the model was trained at, L0 (default: detected)")
    p.add_argument("--factor", type=float, help="factor for every method (default: longest length / L0; dynamic: 2)")
    p.add_argument("--text", type=Path, help="UTF-8 text to cut windows from (default: a bundled public-domain text)")
    p.add_argument("--byte-level", action="store_true", help="token ids are the text's UTF-8 bytes (no tokenizer)")
    p.add_argument("--no-bos", action="store_true", help="do not start windows with the tokenizer's BOS token")
    p.add_argument("--windows", type=int, default=8, help="windows per length (default 8)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: back to back)")
    p.add_argument("--tail", type=float, default=0.25, help="fraction of each window scored separately (default 0.25)")
    g = p.add_argument_group("passkey retrieval")
    g.add_argument("--passkey", action="store_true", help="also measure passkey retrieval")
    g.add_argument("--passkey-lengths", type=_ints, help="lengths for the passkey test (default: --lengths)")
    g.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="key depths in [0, 1]")
    g.add_argument("--trials", type=int, default=4, help="random keys per length and depth (default 4)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("local model")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype")
    g.add_argument(
        "--strategy",
        choices=["patch", "reload"],
        default="patch",
        help="patch one loaded model per method (default) or reload it inside ropepatch.temporarily_enabled()",
    )
    g.add_argument("--trust-remote-code", action="store_true")
    g = p.add_argument_group("server (instead of a local model)")
    g.add_argument("--endpoint", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    g.add_argument("--api", choices=["tgi", "openai"], help="the server's API (required with --endpoint)")
    g.add_argument("--served-model", help="model name for the OpenAI API (default: MODEL)")
    g.add_argument("--label", default="endpoint", help="name of the server's line in tables and plots")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("ropepatch-eval"), help="output folder (default ./ropepatch-eval)")
    g.add_argument("--title", help="title of the plots (default: the model folder's name)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--json", action="store_true", help="print results.json to stdout instead of tables")
    return p


def _log(args: argparse.Namespace) -> Any:
    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    return log


def _load_text(args: argparse.Namespace) -> tuple[str, str]:
    if args.text is None:
        from ropepatch.evaluation.texts import default_text

        return default_text()
    try:
        return args.text.read_text(encoding="utf-8"), str(args.text)
    except (OSError, UnicodeDecodeError) as exc:
        raise RopeConfigError(f"cannot read --text: {exc}", path=str(args.text)) from None


def _tokenizer(args: argparse.Namespace, source: str | None) -> Any:
    if args.byte_level:
        from ropepatch.evaluation.byte_tokens import ByteCodec

        return ByteCodec()
    if source is None:
        raise RopeConfigError("give MODEL (for its tokenizer) or --byte-level")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... here (--debug shows it)
        from ropepatch.cli.main import UsageError

        raise UsageError(
            "no tokenizer could be loaded from it",
            hint="pass --byte-level if the model's token ids are the text's UTF-8 bytes, or add its tokenizer "
            "files (tokenizer.json, tokenizer_config.json)",
            path=source,
        ) from exc


def _encode(tok: Any, text: str) -> list[int]:
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tok.encode(text))


def _original(args: argparse.Namespace) -> int:
    if args.original is not None:
        return args.original
    from ropepatch.detection import detect

    spec = detect(args.model, emit_warnings=False)
    original = spec.effective_original or spec.max_position_embeddings
    if original is None:
        raise RopeConfigError("cannot tell the model's original context; pass --original", path=args.model)
    return int(original)


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        return _run_endpoint(args)
    if not args.model:
        raise RopeConfigError("give a checkpoint folder (MODEL), or --endpoint URL --api tgi|openai")
    if not Path(args.model).is_dir():
        # checked first: transformers would take a missing path for a hub id and try the network
        what = "not a folder" if Path(args.model).exists() else "no such folder"
        raise RopeConfigError(
            f"{what}: MODEL is a local checkpoint folder (config.json and weights; ropepatch never downloads)",
            path=args.model,
        )
    from ropepatch.evaluation.runner import EvalSettings, LocalModel, default_lengths, run_variants
    from ropepatch.evaluation.variants import merge_variants, parse_variant, variants_for

    log = _log(args)
    text, text_name = _load_text(args)
    tok = _tokenizer(args, args.model)
    ids = _encode(tok, text)
    bos = None if args.no_bos or args.byte_level else getattr(tok, "bos_token_id", None)
    original = _original(args)
    lengths = args.lengths or default_lengths(original)
    variants = merge_variants(
        variants_for(args.methods.split(","), original=original, target=max(lengths), factor=args.factor),
        [parse_variant(v) for v in args.variant],
    )
    if not variants:
        raise RopeConfigError("nothing to evaluate: --methods and --variant are both empty")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = EvalSettings(
        lengths=lengths,
        windows=args.windows,
        stride=args.stride,
        tail_fraction=args.tail,
        passkey=args.passkey,
        passkey_lengths=args.passkey_lengths,
        depths=args.depths,
        trials=args.trials,
        seed=args.seed,
        progress=not args.no_progress,
    )
    log(f"{args.model}: original context {original}; {len(ids)} tokens of {text_name}; device {device}")
    handle = LocalModel(
        args.model, dtype=args.dtype, device=device, strategy=args.strategy, trust_remote_code=args.trust_remote_code
    )
    start = time.time()
    body = run_variants(handle, variants, ids, settings, tokenizer=tok, bos=bos, log=log)
    results = _header(args, text_name, len(ids), original, lengths, device) | body
    results["seconds"] = round(time.time() - start, 1)
    return _finish(args, results, original)


def _header(
    args: argparse.Namespace,
    text_name: str,
    n_tokens: int,
    original: int | None,
    lengths: list[int],
    device: str | None,
) -> dict[str, Any]:
    import os

    from ropepatch import __version__

    return {
        "ropepatch": __version__,
        "model": args.model,
        "endpoint": args.endpoint,
        "api": args.api,
        "device": device,
        "dtype": args.dtype,
        "text": {"source": text_name, "tokens": n_tokens, "byte_level": bool(args.byte_level)},
        "original_context": original,
        "lengths": lengths,
        "windows": args.windows,
        "tail_fraction": args.tail,
        "env_ROPEPATCH": os.environ.get("ROPEPATCH") or None,
    }


def _finish(args: argparse.Namespace, results: dict[str, Any], original: int | None) -> int:
    from ropepatch.evaluation.report import markdown_tables, write_results

    title = args.title or Path(args.model or args.endpoint).name
    written = write_results(results, args.out, original=original, title=title, plots=not args.no_plots)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print()
        print(markdown_tables(results))
        for check in results.get("variants", []):
            if check.get("ok") is False:
                print(f"\nWARNING {check['label']}: the model's RoPE did not match ropepatch's spec: {check}")
        print("\nwrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _run_endpoint(args: argparse.Namespace) -> int:
    from ropepatch.evaluation.endpoints import openai_scorer, tgi_scorer
    from ropepatch.evaluation.perplexity import cut_windows, perplexity_at_length
    from ropepatch.evaluation.progress import progress_bar

    if args.api is None:
        raise RopeConfigError("--endpoint needs --api tgi or --api openai")
    if args.passkey:
        raise RopeConfigError("--passkey needs a local model (the servers' APIs give no top-token per prompt position)")
    log = _log(args)
    text, text_name = _load_text(args)
    tok = _tokenizer(args, args.model)
    ids = _encode(tok, text)
    original = args.original
    if original is None and args.model and Path(args.model).exists():
        original = _original(args)
    if args.lengths is None and original is None:
        raise RopeConfigError(
            "with --endpoint, give --lengths (or --original, or a local MODEL folder to read it from)"
        )
    from ropepatch.evaluation.runner import default_lengths

    lengths = args.lengths or default_lengths(int(original))  # type: ignore[arg-type]
    if args.api == "openai":
        served = args.served_model or args.model
        if not served:
            raise RopeConfigError("--api openai needs the served model name: --served-model NAME (or MODEL)")
        score = openai_scorer(args.endpoint, served, timeout=args.timeout)
        bos = None if args.no_bos or args.byte_level else getattr(tok, "bos_token_id", None)
    else:
        decode = tok.decode
        score = tgi_scorer(args.endpoint, lambda w: decode(w), timeout=args.timeout)
        bos = None  # TGI tokenises the text itself and adds its own BOS
    # a server's RoPE is not visible through its API: the rows say where they come from instead
    served = f"as served by {args.endpoint} (its RoPE is not reported by the API)"
    points = []
    start = time.time()
    for length in lengths:
        windows = cut_windows(ids, length, max_windows=args.windows, stride=args.stride, bos=bos)
        if not windows:
            log(f"{length}: the text is too short for one window; skipped")
            continue
        with progress_bar(len(windows), f"{args.label} @ {length}", enabled=not args.no_progress) as advance:
            point = perplexity_at_length(
                score, windows, method=args.label, length=length, tail_fraction=args.tail, progress=advance
            )
        points.append(point.to_dict() | {"applied": served})
        log(f"{args.label:>14} {length:>7}  loss {point.nll:.3f}  last quarter {point.tail_nll:.3f}")
    results = _header(args, text_name, len(ids), original, lengths, None) | {
        "perplexity": points,
        "passkey": [],
        "variants": [{"label": args.label, "overrides": f"server at {args.endpoint}", "applied": {"label": served}}],
        "seconds": round(time.time() - start, 1),
    }
    return _finish(args, results, original)
