"""The import graph points one way: app -> itself; ml -> torch/open_clip/stdlib; the API never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_top_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_importing_the_api_loads_no_torch_open_clip_or_ml() -> None:
    code = (
        "import sys, app.main\n"
        "heavy = {'torch', 'open_clip', 'ml', 'worker', 'torchvision'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"app.main imported: {out.stdout.strip()}"


def test_app_imports_nothing_of_ours_but_itself() -> None:
    for path, names in _imported_top_modules("app").items():
        assert not names & {"ml", "worker", "torch", "open_clip", "torchvision", "migrations"}, (path, names)


def test_ml_imports_no_web_db_or_queue_code() -> None:
    forbidden = {"app", "worker", "fastapi", "sqlalchemy", "celery", "kombu", "pydantic_settings", "redis"}
    for path, names in _imported_top_modules("ml").items():
        assert not names & forbidden, (path, names & forbidden)


def test_only_the_settings_module_reads_the_environment() -> None:
    for package in ("app", "worker", "ml"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "app" / "config.py":
                continue
            text = path.read_text(encoding="utf-8")
            for needle in ("os.environ[", "os.environ.get(", "os.getenv("):
                assert needle not in text, f"{path.relative_to(ROOT)} reads the environment ({needle})"
