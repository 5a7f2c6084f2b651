"""README stays true: its two commands exist, and every TAGSIFT_* setting is documented."""

from __future__ import annotations

import os
from pathlib import Path

from app.config import settings_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_documents_every_setting() -> None:
    missing = [env for env, _, _ in settings_table() if f"`{env}`" not in README]
    assert not missing, f"README's configuration section lacks {missing}"


def test_readme_commands_are_executable_scripts() -> None:
    for command in ("./scripts/run.sh", "./scripts/test.sh"):
        assert f"```bash\n{command}\n```" in README
        assert os.access(ROOT / command, os.X_OK), command


def test_ci_runs_the_readme_steps() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in ci
    assert "scripts/test.sh" in ci and "ruff check ." in ci
    # the test command does the whole set-up, and CI does none of its own (it would hide a missing step)
    test_sh = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert "scripts/install.sh" in test_sh and "apt-get install" in test_sh
    assert "apt-get install" not in ci and "pip install" not in ci
