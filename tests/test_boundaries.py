"""The import graph points one way: app -> itself and vocab; ml -> torch/open_clip/stdlib and vocab; vocab -> stdlib
only; the API never loads torch."""

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


def _loaded_after(imports: str, packages: set[str]) -> list[str]:
    """The modules of ``packages`` that a fresh interpreter has loaded after running ``imports``."""
    code = (
        f"import sys\n{imports}\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(packages)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_importing_the_api_loads_no_torch_open_clip_or_ml() -> None:
    loaded = _loaded_after("import app.main", {"torch", "open_clip", "ml", "worker", "torchvision"})
    assert loaded == [], f"app.main imported: {','.join(loaded)}"


def test_the_worker_loads_no_web_framework() -> None:
    """Every worker module imported: no FastAPI or Starlette (the services it calls raise app/errors.py's errors and
    parse uploads without the HTTP layer)."""
    imports = (
        "import importlib, pkgutil, worker\n"
        "mods = [importlib.import_module('worker.' + m.name) for m in pkgutil.iter_modules(worker.__path__)]\n"
        "assert {'worker.tasks', 'worker.training', 'worker.cli'} <= {m.__name__ for m in mods}"
    )
    loaded = _loaded_after(imports, {"fastapi", "starlette"})
    assert loaded == [], f"the worker loaded: {','.join(loaded)}"
    assert _loaded_after("import app.main", {"fastapi"}), "the check must see FastAPI where it is loaded (sanity)"


def test_errors_services_and_the_upload_parser_import_no_web_framework() -> None:
    """Only the HTTP layer (app/api, app/web, app/main.py) and the multipart reader (app/uploads/forms.py) know
    FastAPI or Starlette; the errors, the services and the upload parser are plain Python."""
    found = _imported_top_modules("app")
    plain = [p for p in found if p.startswith(("app/services/", "app/uploads/")) or p == "app/errors.py"]
    assert "app/errors.py" in plain and "app/uploads/pipeline.py" in plain  # sanity: the walk sees them
    for path in plain:
        if path == "app/uploads/forms.py":
            continue
        assert not found[path] & {"fastapi", "starlette"}, path


def test_app_imports_nothing_of_ours_but_itself() -> None:
    for path, names in _imported_top_modules("app").items():
        assert not names & {"ml", "worker", "torch", "open_clip", "torchvision", "migrations"}, (path, names)


def test_ml_imports_no_web_db_or_queue_code() -> None:
    forbidden = {"app", "worker", "fastapi", "sqlalchemy", "celery", "kombu", "pydantic_settings", "redis"}
    for path, names in _imported_top_modules("ml").items():
        assert not names & forbidden, (path, names & forbidden)


def test_vocab_imports_the_standard_library_only() -> None:
    """The shared names (vocab/) are what app and ml may both import: nothing of ours, nothing installed."""
    found = _imported_top_modules("vocab")
    assert found, "vocab/ has modules (sanity)"
    for path, names in found.items():
        assert names <= set(sys.stdlib_module_names) | {"__future__", "vocab"}, (path, names)


def test_app_and_ml_may_import_vocab() -> None:
    """Both sides read the shared names from vocab (the reason it exists): at least one module of each does."""
    for package in ("app", "ml"):
        assert any("vocab" in names for names in _imported_top_modules(package).values()), package


def test_only_the_settings_module_reads_the_environment() -> None:
    for package in ("app", "worker", "ml", "vocab"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "app" / "config.py":
                continue
            text = path.read_text(encoding="utf-8")
            for needle in ("os.environ[", "os.environ.get(", "os.getenv("):
                assert needle not in text, f"{path.relative_to(ROOT)} reads the environment ({needle})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, function-local and TYPE_CHECKING imports included."""
    paths = {_module_name(p): p for package in packages for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg
                names = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module for a in node.names
                ]
            else:
                continue
            targets.update(name for name in names if name in paths and name != module)
        graph[module] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_lazy_imports_included() -> None:
    graph = _import_graph(("app", "worker", "ml", "bench", "vocab"))
    assert "ml.spec" in graph["ml.reference"], "the graph must see imports (sanity)"
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_service_packages_never_import_the_benchmarks() -> None:
    """bench/ is left out of the Docker images: nothing that ships may import it (the CLI finds it by entry point)."""
    for package in ("app", "worker", "ml", "vocab"):
        for path, names in _imported_top_modules(package).items():
            assert "bench" not in names, path
