"""ropepatch never executes code from a checkpoint and never touches the network.

The guards are real, not mocks: a process-wide audit hook (PEP 578) sees every socket connect,
address lookup, file open, ``exec`` and ``compile`` while a guarded block runs, and a checkpoint
folder ships modelling code, a remote-code ``auto_map`` and a pickle whose loading would each
leave a marker file behind.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hardening_kit as kit
import hardening_strategies as hs
import pytest

from ropepatch import RopeConfigError, detect
from ropepatch.cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ropepatch"

# -- the audit-hook guard -----------------------------------------------------------------------
NETWORK_EVENTS = {
    "socket.connect",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.sendto",
    "socket.sendmsg",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
}


class _Guard:
    """What the audit hook watches; one per process (audit hooks cannot be removed)."""

    def __init__(self) -> None:
        self.active = False
        self.thread: int | None = None
        self.folder: str | None = None
        self.seen: list[tuple[str, str]] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or threading.get_ident() != self.thread:
            return
        if event in NETWORK_EVENTS:
            self.seen.append((event, repr(args)[:200]))
            raise PermissionError(f"ropepatch tried to use the network: {event} {args!r}"[:300])
        if self.folder is None:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.startswith(self.folder) and path.endswith((".py", ".pyc", ".so", ".bin", ".pkl", ".pt")):
                self.seen.append((event, path))
        elif event in ("exec", "compile"):
            code = args[0] if args else None
            filename = getattr(code, "co_filename", None) if event == "exec" else (args[1] if len(args) > 1 else None)
            if isinstance(filename, (str, bytes)) and os.fsdecode(filename).startswith(self.folder):
                self.seen.append((event, os.fsdecode(filename)))
        elif event == "pickle.find_class":
            self.seen.append((event, repr(args)[:200]))


GUARD = _Guard()
sys.addaudithook(GUARD)


@contextmanager
def guarded(folder: Path | None = None) -> Iterator[list[tuple[str, str]]]:
    """Record (and for the network: refuse) what ropepatch does inside the block."""
    GUARD.seen = []
    GUARD.folder = str(folder.resolve()) if folder is not None else None
    GUARD.thread = threading.get_ident()
    GUARD.active = True
    try:
        yield GUARD.seen
    finally:
        GUARD.active = False
        GUARD.folder = None


def test_the_guard_sees_a_connect() -> None:
    # the guard itself must be able to fail: a real connect attempt is seen and refused
    import socket

    with guarded() as seen, pytest.raises(PermissionError), socket.socket() as s:
        s.connect(("127.0.0.1", 9))
    assert seen and seen[0][0] == "socket.connect"


# -- a checkpoint that tries to run code --------------------------------------------------------
# an absolute marker path: transformers runs remote code from a copy in its modules cache
MARKER_CODE = """
open({marker!r}, "w").write("ran")
"""


class _Bomb:
    """Unpickling this creates a marker file (harmless stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def hostile_checkpoint(folder: Path, model_type: str = "evil") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": model_type,
        "architectures": ["EvilForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 512,
        "vocab_size": 128,
        "max_position_embeddings": 16384,
        "rope_scaling": {"type": "linear", "factor": 4.0},
        "_name_or_path": "evil-org/evil-model",
    }
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_evil", "modeling_evil", "tokenization_evil", "__init__", "ropepatch_plugin"):
        (folder / f"{name}.py").write_text(MARKER_CODE.format(marker=str(folder.resolve() / f"EXECUTED-{name}")))
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Bomb(str(folder / "EXECUTED-pickle"))))
    return folder


def markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("EXECUTED-*"))


def test_the_markers_work(tmp_path: Path) -> None:
    # the checkpoint's code really would leave markers if something ran it
    folder = hostile_checkpoint(tmp_path / "ckpt")
    subprocess.run([sys.executable, str(folder / "modeling_evil.py")], check=True, timeout=60)
    pickle.loads((folder / "training_args.bin").read_bytes())  # noqa: S301 - our own bomb
    assert markers(folder) == ["EXECUTED-modeling_evil", "EXECUTED-pickle"]


def test_detect_and_inspect_never_run_checkpoint_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = hostile_checkpoint(tmp_path / "ckpt")
    before = set(sys.modules)
    with guarded(folder) as seen:
        spec = detect(folder, use_env=False, emit_warnings=False)
        detect(folder / "config.json", use_env=False, emit_warnings=False)
        assert cli_main(["inspect", str(folder), "--no-env", "--json"]) == 0
        assert cli_main(["inspect", str(folder), "--no-env"]) == 0
        assert cli_main(["inspect", str(folder), "--no-env", "--as", "llama.cpp"]) == 0
    assert seen == [], seen
    assert markers(folder) == []
    assert (spec.method, spec.factor) == ("linear", 4.0)
    report = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    assert report["method"] == "linear"
    new = set(sys.modules) - before
    from_folder = [m for m in new if str(getattr(sys.modules[m], "__file__", "") or "").startswith(str(folder))]
    assert from_folder == []


def test_cli_in_a_fresh_process_runs_no_checkpoint_code(tmp_path: Path) -> None:
    folder = hostile_checkpoint(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ROPEPATCH", None)
    out = subprocess.run(
        [sys.executable, "-m", "ropepatch", "inspect", str(folder), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == "linear"
    assert markers(folder) == []


def test_transformers_with_ropepatch_enabled_runs_no_remote_code_unless_trusted(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is the runtime that could load remote code")
    import ropepatch

    folder = hostile_checkpoint(tmp_path / "ckpt", model_type="llama")
    was_enabled = ropepatch.is_enabled()
    ropepatch.enable()
    try:
        with guarded(folder) as seen:
            config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
            spec = detect(config, use_env=False, emit_warnings=False)
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    finally:
        if not was_enabled:
            ropepatch.disable()
    assert type(config).__name__ == "LlamaConfig" and type(model).__name__ == "LlamaForCausalLM"
    assert spec.method == "linear"
    assert [e for e in seen if e[0] != "open"] == []  # no network, exec, compile or unpickling
    assert markers(folder) == []


# -- no network -----------------------------------------------------------------------------
REMOTE_LOOKING = [
    "meta-llama/Llama-2-7b-hf",
    "Qwen/Qwen3-0.6B",
    "hf://meta-llama/Llama-2-7b-hf",
    "https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json",
    "s3://bucket/model/config.json",
    "//server/share/config.json",
]


@pytest.mark.parametrize("source", REMOTE_LOOKING)
def test_remote_looking_sources_fail_offline(source: str) -> None:
    with guarded() as seen, pytest.raises(RopeConfigError) as info:
        detect(source, use_env=False)
    assert seen == []
    assert "no such file or folder" in str(info.value)
    if source.count("/") == 1:
        assert "never downloads" in str(info.value)


def test_cli_on_a_repo_id_fails_offline(capsys: pytest.CaptureFixture[str]) -> None:
    with guarded() as seen:
        assert cli_main(["inspect", "meta-llama/Llama-2-7b-hf", "--no-env"]) == 2
    assert seen == []
    assert "never downloads" in capsys.readouterr().err


def test_no_network_over_the_corpus_and_seeds(tmp_path: Path) -> None:
    sources: list[Any] = [json.loads(json.dumps(seed)) for seed in hs.SEEDS]
    for path in sorted(kit.CORPUS.glob("*/*")):
        if path.parent.name in ("config", "gguf"):
            target = tmp_path / path.parent.name / ("config.json" if path.suffix == ".json" else "model.gguf")
            target.parent.mkdir(exist_ok=True)
            copy = tmp_path / f"{path.parent.name}-{path.name}"
            copy.write_bytes(path.read_bytes())
            sources.append(copy)
    assert len(sources) > 40
    with guarded() as seen:
        for source in sources:
            kit.outcome_of(
                "safety-no-network", lambda source=source: detect(source, use_env=False, emit_warnings=False)
            )
    assert seen == []


# -- files that are not files -----------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
@pytest.mark.parametrize("name", ["config.json", "model.gguf", "weights"])
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with kit.watchdog(10), pytest.raises(RopeConfigError, match="not a regular file"):
        detect(fifo, use_env=False)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_refused(tmp_path: Path) -> None:
    with kit.watchdog(10), pytest.raises(RopeConfigError, match="not a regular file"):
        detect("/dev/zero", use_env=False)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").symlink_to("/dev/zero")
    with kit.watchdog(10), pytest.raises(RopeConfigError, match="no config.json"):
        detect(tmp_path / "ckpt", use_env=False)


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root reads every file: a permission error cannot be produced"
)
def test_an_unreadable_folder_is_a_named_error(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    folder.chmod(0)
    try:
        with pytest.raises(RopeConfigError) as info:
            detect(folder, use_env=False)
        assert str(folder) in str(info.value)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_a_path_with_a_nul_byte_is_a_named_error() -> None:
    with pytest.raises(RopeConfigError, match="no such file"):
        detect("config\0.json", use_env=False)


# -- what the source may not do ---------------------------------------------------------------
CORE = [
    *sorted((PACKAGE / "metadata").glob("*.py")),
    *sorted((PACKAGE / "detectors").glob("*.py")),
    *sorted((PACKAGE / "methods").glob("*.py")),
    *(
        PACKAGE / name
        for name in ("errors.py", "spec.py", "detection.py", "overrides.py", "registry.py", "llamacpp.py")
    ),
]
BANNED_IMPORTS = {
    "socket", "ssl", "urllib", "http", "requests", "httpx", "aiohttp", "huggingface_hub", "pickle", "dill",
    "marshal", "shelve", "joblib", "runpy", "subprocess", "ctypes",
}  # fmt: skip
BANNED_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}


def _passes_the_users_choice(value: ast.expr) -> bool:
    """``False``, or the user's own flag passed along (``args.trust_remote_code``, ``trust_remote_code``)."""
    if isinstance(value, ast.Constant):
        return value.value is False
    if isinstance(value, ast.Name):
        return value.id == "trust_remote_code"
    return isinstance(value, ast.Attribute) and value.attr == "trust_remote_code"


def _is_add_argument_for_trust(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and any(isinstance(a, ast.Constant) and a.value == "--trust-remote-code" for a in node.args)
    )


def _calls_and_imports(path: Path) -> tuple[set[str], set[str], list[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports: set[str] = set()
    calls: set[str] = set()
    trusts: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):  # a builtin such as eval(...)
                calls.add(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):  # module.func(...)
                calls.add(f"{func.value.id}.{func.attr}")
            for kw in node.keywords:
                if kw.arg == "trust_remote_code" and not _passes_the_users_choice(kw.value):
                    trusts.append(f"{path.name}:{node.lineno}")
            if _is_add_argument_for_trust(node):
                options = {kw.arg: kw.value for kw in node.keywords}
                action = options.get("action")
                if not (isinstance(action, ast.Constant) and action.value == "store_true") or "default" in options:
                    trusts.append(f"{path.name}:{node.lineno} (the flag must be store_true, off by default)")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not _passes_the_users_choice(v):
                    trusts.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            defaults = dict(
                zip([a.arg for a in positional[len(positional) - len(args.defaults) :]], args.defaults, strict=True)
            )
            defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None})
            default = defaults.get("trust_remote_code")
            if default is not None and not (isinstance(default, ast.Constant) and default.value is False):
                trusts.append(f"{path.name}:{node.lineno} (defaults trust_remote_code to something but False)")
    return imports, calls, trusts


@pytest.mark.parametrize("path", CORE, ids=[str(p.relative_to(PACKAGE)) for p in CORE])
def test_the_detection_core_cannot_reach_the_network_or_run_code(path: Path) -> None:
    imports, calls, _ = _calls_and_imports(path)
    assert not imports & BANNED_IMPORTS, f"{path.name} imports {imports & BANNED_IMPORTS}"
    assert not calls & BANNED_CALLS, f"{path.name} calls {calls & BANNED_CALLS}"
    assert not calls & {"torch.load", "pickle.load", "pickle.loads", "yaml.load"}


def test_nothing_in_ropepatch_turns_on_trust_remote_code() -> None:
    # remote code runs only where the user passed trust_remote_code: ropepatch passes a literal
    # False or the user's own flag along (args.trust_remote_code), its own parameters default to
    # False, and a --trust-remote-code flag is store_true (off unless given)
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _calls_and_imports(path)[2]]
    assert found == [], f"trust_remote_code passed a non-False value at {found}"
    from ropepatch.cli.main import build_parser

    args = build_parser().parse_args(["eval", "some/model"])
    assert args.trust_remote_code is False  # the only source of a True is the user's own flag
    assert len(list(PACKAGE.rglob("*.py"))) > 20
