"""``ropepatch run -- llama-server ...``: the command line it builds, recorded by a stub llama-server.

The numbers in the expected flags are computed here from llama.cpp's documented semantics
(``--rope-scale s`` is ``rope_freq_scale = 1/s``; YaRN's cos/sin factor is
``attn_factor_key * (0.1 ln s + 1)``), not taken from ropepatch.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stub(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding llama-server and llama-cli scripts that write their argv (one per line) to a file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.txt"
    for name in ("llama-server", "llama-cli"):
        script = bindir / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "{record}"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir, record


def run(args: list[str], bindir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ROPEPATCH", None)
    return subprocess.run(
        [sys.executable, "-m", "ropepatch", "run", *args], env=env, capture_output=True, text=True, timeout=120
    )


def recorded(record: Path) -> list[str]:
    return record.read_text().splitlines()[1:]


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_yarn_override_on_a_plain_gguf(plain_gguf: Path, stub) -> None:
    bindir, record = stub
    r = run(
        [
            "--method",
            "yarn",
            "--factor",
            "4",
            "--original",
            "64",
            "--",
            "llama-server",
            "-m",
            str(plain_gguf),
            "--port",
            "8081",
        ],
        bindir,
    )
    assert r.returncode == 0, r.stderr
    argv = recorded(record)
    assert argv[:4] == ["-m", str(plain_gguf), "--port", "8081"]  # the user's command first, untouched
    assert flag(argv, "--rope-scaling") == "yarn"
    assert float(flag(argv, "--rope-scale")) == 4.0  # llama.cpp: rope_freq_scale = 1/4
    assert "--rope-freq-scale" not in argv
    assert int(flag(argv, "--yarn-orig-ctx")) == 64
    assert float(flag(argv, "--rope-freq-base")) == 10000.0
    assert float(flag(argv, "--yarn-beta-fast")) == 32.0 and float(flag(argv, "--yarn-beta-slow")) == 1.0
    assert int(flag(argv, "-c")) == 256
    assert "--override-kv" not in argv  # YaRN's own 0.1 ln s + 1 is what llama.cpp applies by itself
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("ropepatch:")]
    assert len(line) == 1 and "added --rope-scaling yarn" in line[0] and "tiny-plain.gguf" in line[0]


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_explicit_attention_factor_travels_as_a_kv_override(plain_gguf: Path, stub) -> None:
    bindir, record = stub
    r = run(
        ["--method", "yarn", "--factor", "8", "--original", "32", "--set", "attention_factor=1.0", "--",
         "llama-cli", "-m", str(plain_gguf)],
        bindir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    argv = recorded(record)
    key, _, value = flag(argv, "--override-kv").partition("=")
    assert key == "llama.rope.scaling.attn_factor"
    kind, _, number = value.partition(":")
    assert kind == "float"
    # llama.cpp multiplies cos/sin by key * (0.1 ln 8 + 1); the spec wants 1.0
    assert float(number) == pytest.approx(1.0 / (0.1 * math.log(8) + 1), rel=1e-9)


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_linear_and_ntk(plain_gguf: Path, stub) -> None:
    bindir, record = stub
    assert (
        run(["--method", "linear", "--factor", "2", "--", "llama-server", "-m", str(plain_gguf)], bindir).returncode
        == 0
    )
    argv = recorded(record)
    assert flag(argv, "--rope-scaling") == "linear" and float(flag(argv, "--rope-scale")) == 2.0
    assert run(["--method", "ntk", "--alpha", "2", "--", "llama-server", "-m", str(plain_gguf)], bindir).returncode == 0
    argv = recorded(record)
    # NTK-aware: b * alpha^(d/(d-2)) with d = 16 (the GGUF's rope.dimension_count)
    assert float(flag(argv, "--rope-freq-base")) == pytest.approx(10000 * 2 ** (16 / 14), rel=1e-9)
    assert flag(argv, "--rope-scaling") == "none" and "--rope-scale" not in argv


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_users_flags_win_and_are_reported(plain_gguf: Path, stub) -> None:
    bindir, record = stub
    r = run(
        ["--method", "yarn", "--factor", "4", "--original", "64", "--", "llama-server", "-m", str(plain_gguf),
         "--rope-freq-scale", "0.5", "--ctx-size", "128", "--yarn-beta-fast=16"],
        bindir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    argv = recorded(record)
    assert "--rope-scale" not in argv and "-c" not in argv and "--yarn-beta-fast" not in argv
    assert flag(argv, "--rope-freq-scale") == "0.5" and flag(argv, "--ctx-size") == "128"
    kept = r.stderr.split("kept yours: ", 1)[1]
    for mine in ("--rope-freq-scale 0.5", "--ctx-size 128", "--yarn-beta-fast 16"):
        assert mine in kept


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
@pytest.mark.parametrize(
    ("overrides", "method", "closest"),
    [
        (["--method", "part-ntk", "--factor", "4", "--original", "64"], "part-ntk", "yarn"),
        (["--method", "dynamic", "--factor", "4", "--original", "64"], "dynamic", "ntk"),
        (["--method", "yarn", "--factor", "4", "--original", "64", "--set", "truncate=false"], "yarn", "truncate=true"),
    ],
)
def test_inexpressible_exits_2_before_starting(plain_gguf: Path, stub, overrides, method, closest) -> None:
    bindir, record = stub
    r = run([*overrides, "--", "llama-server", "-m", str(plain_gguf)], bindir)
    assert r.returncode == 2
    assert not record.exists()  # the server never started
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert f"cannot run RoPE method {method!r}" in lines[0]
    assert closest in lines[0].split("closest it can run:", 1)[1]


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_a_gguf_with_its_keys_and_no_overrides(yarn_gguf: Path, plain_gguf: Path, stub) -> None:
    bindir, record = stub
    r = run(["--", "llama-server", "-m", str(plain_gguf)], bindir)
    assert r.returncode == 0 and recorded(record) == ["-m", str(plain_gguf)]
    assert "plain RoPE per its metadata; nothing added" in r.stderr
    r = run(["--", "llama-server", "--model", str(yarn_gguf)], bindir)
    argv = recorded(record)
    assert flag(argv, "--rope-scaling") == "yarn" and float(flag(argv, "--rope-scale")) == 4.0
    assert int(flag(argv, "--yarn-orig-ctx")) == 64


@pytest.mark.skipif(os.name != "posix", reason="the stub binary is a POSIX shell script")
def test_missing_model_file_is_one_line(tmp_path: Path, stub) -> None:
    bindir, record = stub
    r = run(["--factor", "2", "--", "llama-server", "-m", str(tmp_path / "nope.gguf")], bindir)
    assert r.returncode == 2 and not record.exists()
    assert "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_binary_names() -> None:
    from ropepatch.launcher.llamacpp import is_llamacpp_binary

    for name in ("llama-server", "/opt/llama.cpp/build/bin/llama-cli", "llama-perplexity", "llama-server.exe"):
        assert is_llamacpp_binary(name), name
    for name in ("python", "text-generation-launcher", "vllm", "llama", "ollama"):
        assert not is_llamacpp_binary(name), name
