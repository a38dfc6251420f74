"""Every file ropepatch writes goes through a private temporary file: planted symlinks are never followed.

The attack: someone who can write to site-packages (or an eval output folder) but not to a file
the installer can, plants a symlink at the name ropepatch writes, or at the temporary name it
writes first; the (often root) writer then overwrites the link's target. Each test plants links
at both names and checks that the target's bytes and the link itself are untouched.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import hardening_kit as kit
import pytest

from ropepatch.atomic import atomic_write
from ropepatch.cli.main import main as cli_main
from ropepatch.launcher.pth import PTH_LINE, PTH_NAME

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"root:x:0:0:the file an attacker wants overwritten\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim" / "passwd"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    return folder


class _GuessedNames:
    """The names mkstemp will try, in order: the first ``planted`` are taken by the attacker's links.

    Python's own candidate names are random; replacing their source lets the test play an attacker
    who guessed them all, which is the worst case (the O_EXCL open must refuse every planted one).
    """

    def __init__(self, planted: int) -> None:
        self.names = [f"guess{i:03d}" for i in range(planted)]
        self.fresh = (f"fresh{i:03d}" for i in range(10**6))

    def __call__(self) -> _GuessedNames:
        return self

    def __iter__(self) -> _GuessedNames:
        return self

    def __next__(self) -> str:
        return self.names.pop(0) if self.names else next(self.fresh)


def _plant(folder: Path, names: list[str], target: Path) -> list[Path]:
    links = []
    for name in names:
        link = folder / name
        link.symlink_to(target)
        links.append(link)
    return links


def _untouched(victim: Path, links: list[Path]) -> None:
    assert victim.read_bytes() == SECRET
    for link in links:
        assert link.is_symlink() and os.readlink(link) == str(victim)


def test_install_pth_over_planted_symlinks_in_process(site, victim, monkeypatch, capsys):
    guesses = _GuessedNames(planted=20)
    prefix = f".{PTH_NAME}."
    # the attacker's links: the final name, the old fixed temporary name, and 20 guessed temp names
    links = _plant(site, [PTH_NAME, f"{PTH_NAME}.tmp", *(f"{prefix}{n}.tmp" for n in guesses.names)], victim)
    final_link, *temp_links = links
    monkeypatch.setattr(tempfile, "_get_candidate_names", guesses)

    assert cli_main(["install-pth", "--site", str(site)]) == 0
    assert victim.read_bytes() == SECRET
    _untouched(victim, temp_links)  # every planted temporary name was refused, not opened
    written = site / PTH_NAME
    assert not written.is_symlink() and written.is_file()  # the link at the final name was replaced, not followed
    assert written.read_text(encoding="utf-8").endswith(PTH_LINE)
    assert stat.S_IMODE(written.lstat().st_mode) == 0o644  # readable by every interpreter, as site-packages is
    leftovers = sorted(p.name for p in site.iterdir() if p.name.startswith(prefix) and not p.is_symlink())
    assert leftovers == []  # no temporary file left behind
    kit.record("atomic-install-pth", "spec")


def test_install_pth_over_planted_symlinks_as_a_user_runs_it(site, victim):
    links = _plant(site, [PTH_NAME, f"{PTH_NAME}.tmp"], victim)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "ropepatch", "install-pth", "--site", str(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    _untouched(victim, links[1:])
    assert (site / PTH_NAME).read_text(encoding="utf-8").endswith(PTH_LINE)
    kit.record("atomic-install-pth", "spec")


@pytest.mark.parametrize("where", ["missing", "a-file"])
def test_install_pth_into_a_bad_folder_is_one_line_exit_2(tmp_path, where):
    site = tmp_path / "nonexistent"
    if where == "a-file":
        site.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPATCH")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "ropepatch", "install-pth", "--site", str(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("ropepatch: error: ") and str(site) in lines[0] and len(lines) <= 2
    kit.record("atomic-install-pth", "error", "no such site-packages directory")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    class Unwritable:
        pass

    with pytest.raises(TypeError):
        atomic_write(path, Unwritable())  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_eval_results_over_planted_symlinks(tmp_path, victim):
    from ropepatch.evaluation.report import write_results

    out = tmp_path / "out"
    out.mkdir()
    links = _plant(out, ["results.json", "perplexity.csv", "passkey.csv", "PLOTS_SKIPPED.txt"], victim)
    results = {
        "perplexity": [{"method": "plain", "length": 64, "nll": 1.5, "ppl": 4.48}],
        "passkey": [{"method": "plain", "length": 64, "depth": 0.5, "trials": 2, "correct": 1, "accuracy": 0.5}],
    }
    written = write_results(results, out, plots=False)
    assert victim.read_bytes() == SECRET
    for link in links[:3]:
        assert not link.is_symlink()  # replaced by the real output
    assert '"nll": 1.5' in written["json"].read_text()
    header, first = written["perplexity_csv"].read_text().splitlines()[:2]
    row = dict(zip(header.split(","), first.split(","), strict=True))
    assert row["method"] == "plain" and row["length"] == "64"
    kit.record("atomic-eval-results", "spec")


def test_webui_override_store_over_a_planted_symlink(tmp_path, victim):
    from ropepatch.integrations.webui import OverrideStore

    store_path = tmp_path / "webui" / "ropepatch-overrides.json"
    store_path.parent.mkdir()
    _plant(store_path.parent, [store_path.name], victim)
    store = OverrideStore(store_path)
    store.set("my-model", {"method": "yarn", "factor": 4})
    assert victim.read_bytes() == SECRET
    assert not store_path.is_symlink()
    assert store.get("my-model")["factor"] == 4
    kit.record("atomic-webui-store", "spec")
