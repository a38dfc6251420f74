"""Fixtures for launcher tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def user_sitecustomize(tmp_path: Path) -> Path:
    """A folder with the user's own sitecustomize.py, which records each process it runs in."""
    folder = tmp_path / "user_site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import os\n"
        "MARK = 'user sitecustomize'\n"
        "with open(os.environ['USER_SC_LOG'], 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
    )
    return folder
