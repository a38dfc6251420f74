"""A newcomer's mistakes end in a short message with the fix and exit status 2, for every verb.

The verbs are read from the parser itself, so a verb added later is covered without touching this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ropepatch.cli import main as cli
from ropepatch.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "checkpoints" / "airophin-pntk-16k" / "config.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_short_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("ropepatch: error:"), err
    assert 1 <= len(lines) <= 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _typo(option: str) -> str:
    # swap two letters inside the name: never a prefix of the real option (argparse would accept an abbreviation)
    body = option[2:]
    i = len(body) // 2
    return "--" + body[: i - 1] + body[i] + body[i - 1] + body[i + 1 :]


def _mistyped_cases() -> list[tuple[str, str, str]]:
    cases = []
    for verb, parser in _verbs().items():
        longs = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
        # the verb's own longest option (the shared --debug only when it has no other)
        option = max((s for s in longs if s != "--debug"), key=len, default="--debug")
        typo = _typo(option)
        assert typo != option and typo not in longs
        cases.append((verb, typo, option))
    return cases


def test_every_verb_is_covered():
    assert {"inspect", "methods", "plugins", "run", "install-pth", "uninstall-pth", "eval", "doctor"} <= set(_verbs())


@pytest.mark.parametrize(("verb", "typo", "option"), _mistyped_cases())
def test_a_mistyped_option_names_the_closest_one(capsys, verb, typo, option):
    code, err = run(capsys, verb, typo, "x")
    assert_short_user_error(
        code, err, f"unrecognized option {typo!r}", f"did you mean {option!r}", f"ropepatch {verb} --help"
    )


def test_run_facter(capsys):
    code, err = run(capsys, "run", "--facter", "4", "--", sys.executable, "-c", "pass")
    assert_short_user_error(code, err, "did you mean '--factor'")
    code, err = run(capsys, "run", "--facter=4", "--", sys.executable, "-c", "pass")
    assert_short_user_error(code, err, "did you mean '--factor'")


def test_mistyped_verb_global_option_and_choice(capsys):
    assert_short_user_error(*run(capsys, "inspet", str(CONFIG)), "did you mean 'inspect'")
    assert_short_user_error(*run(capsys, "--verison"), "did you mean '--version'")
    assert_short_user_error(*run(capsys, "--verison", "inspect", str(CONFIG)), "did you mean '--version'")
    assert_short_user_error(*run(capsys, "inspect", str(CONFIG), "--as", "llama"), "did you mean 'llama.cpp'")
    # a command after -- is the user's, never checked as ropepatch's options
    code, err = run(capsys, "run", "--print-env", "--", "python", "--facter")
    assert code == 0, err


@pytest.mark.parametrize("verb", ["inspect", "doctor", "eval"])
def test_missing_path(capsys, tmp_path, verb):
    missing = tmp_path / "no-such-model"
    assert_short_user_error(*run(capsys, verb, str(missing)), str(missing), "no such")


@pytest.mark.parametrize("verb", ["inspect", "doctor"])
def test_weights_file_instead_of_the_config(capsys, tmp_path, verb):
    weights = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    code, err = run(capsys, verb, str(weights))
    assert_short_user_error(code, err, "weights file", "config.json")
    assert "UTF-8" not in err


def test_eval_wants_a_folder(capsys, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    assert_short_user_error(*run(capsys, "eval", str(weights)), "not a folder", "checkpoint folder")


def test_eval_without_a_tokenizer_points_at_byte_level(capsys, tmp_path):
    (tmp_path / "config.json").write_text(CONFIG.read_text())
    code, err = run(capsys, "eval", str(tmp_path), "--no-plots", "--no-progress", "--out", str(tmp_path / "out"))
    assert_short_user_error(code, err, "no tokenizer", "--byte-level")


def test_unreadable_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00cut")  # the magic and version, then the file ends
    assert_short_user_error(*run(capsys, "inspect", str(bad)), "GGUF", "hint:")


def test_install_pth_into_a_missing_site(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    code, err = run(capsys, "install-pth", "--site", str(missing))
    assert_short_user_error(code, err, str(missing), "--site takes an existing site-packages folder")
    assert not missing.exists()


def test_debug_shows_the_traceback(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    for argv in (
        ["--debug", "install-pth", "--site", str(missing)],
        ["install-pth", "--debug", "--site", str(missing)],
    ):
        code, err = run(capsys, *argv)
        assert code == 2 and "Traceback (most recent call last)" in err, err
        assert err.strip().endswith(
            "hint: --site takes an existing site-packages folder; leave it out for this "
            f"Python's ({__import__('sysconfig').get_paths()['purelib']})"
        ), err


def test_an_unexpected_error_is_one_line_and_points_at_debug(capsys, monkeypatch):
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug\nwith a long story")

    monkeypatch.setattr(cli.importlib.import_module("ropepatch.cli.methods_cmd"), "run", broken)
    code, err = run(capsys, "methods")
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [
        "ropepatch: error: RuntimeError: a bug",
        "  rerun with `ropepatch --debug methods ...` for the traceback",
    ]


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ropepatch", "run", "--facter", "4", "--", sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert_short_user_error(proc.returncode, proc.stderr, "did you mean '--factor'")
