"""The opt-in ``.pth`` hook, installed into a real (pip-less) virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv

from launcher_helpers import clean_env, ropepatch_cli

from ropepatch.launcher.pth import PTH_NAME

PROGRAM = (
    "import ropepatch.runtime as rt; st = rt.current();print(rt.is_enabled(), st and [o.to_env() for o in st.env])"
)


def test_pth_enables_only_when_asked_and_uninstalls(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()

    def run(**extra):
        out = subprocess.run(
            [python, "-c", PROGRAM], env=clean_env(**extra), capture_output=True, text=True, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run(ROPEPATCH_AUTOENABLE="1") == "False None"  # nothing installed yet
    # install with the venv's own interpreter: the default target is its site-packages
    proc = subprocess.run([python, "-m", "ropepatch", "install-pth"], env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "venv").exists() and f"{site}/{PTH_NAME}" in proc.stdout

    assert run() == "False None"  # installed but not asked for: inert
    assert run(ROPEPATCH_AUTOENABLE="0") == "False None"
    assert run(ROPEPATCH_AUTOENABLE="1", ROPEPATCH="ntk:alpha=2") == "True ['ntk:alpha=2.0']"
    # the system interpreter (another site-packages) is untouched
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=clean_env(ROPEPATCH_AUTOENABLE="1"), capture_output=True, text=True
    )
    assert out.stdout.strip() == "False None"

    proc = ropepatch_cli("uninstall-pth", "--site", site)
    assert proc.returncode == 0 and "removed" in proc.stdout
    assert run(ROPEPATCH_AUTOENABLE="1") == "False None"
    proc = ropepatch_cli("uninstall-pth", "--site", site)
    assert proc.returncode == 0 and "nothing to remove" in proc.stdout


def test_install_pth_into_a_missing_folder_is_a_clear_error(tmp_path):
    proc = ropepatch_cli("install-pth", "--site", str(tmp_path / "nope"))
    assert proc.returncode != 0 and "no such site-packages directory" in proc.stderr
