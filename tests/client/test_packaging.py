"""The client is a package of its own: it imports only the standard library, httpx and tqdm (pandas and the
export's onnxruntime lazily, as extras), and builds as a wheel from client/ alone."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "client" / "tagsift_client"
ALLOWED = {"httpx", "tqdm", "pandas", "tagsift_client"}


def test_the_client_imports_none_of_the_server_or_torch() -> None:
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            for name in names:
                assert name in ALLOWED or name in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_its_dependencies_are_httpx_and_tqdm_only() -> None:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "tqdm"]
    assert project["scripts"] == {"tagsift-client": "tagsift_client.cli:main"}


def test_it_builds_as_a_wheel_on_its_own(tmp_path: Path) -> None:
    """From a copy of client/ alone (nothing else of the repository; the build writes only into the copy)."""
    source = tmp_path / "client"
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("tagsift_client-*.whl"))
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tagsift_client/client.py", "tagsift_client/py.typed", "tagsift_client/cli.py"} <= names
    assert not any(n.startswith(("app/", "worker/", "ml/")) for n in names)
