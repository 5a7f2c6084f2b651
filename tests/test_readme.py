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
    assert "scripts/install.sh" in ci and "scripts/test.sh" in ci and "ruff check ." in ci
