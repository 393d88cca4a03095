"""The package's shape: no import circles, a cheap top-level import, a public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_xfusion

PACKAGE = Path(napari_xfusion.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports, anywhere in it (functions and
    TYPE_CHECKING blocks included: a circle hidden in either is still a circle)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                circle = stack[stack.index(child):] + [child]
                pytest.fail("import circle: " + " -> ".join(circle))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_graph_sees_imports():
    # The check above is only worth something if the graph finds real edges.
    graph = import_graph()
    assert "napari_xfusion.engine" in graph["napari_xfusion.methods.neural"]
    assert "napari_xfusion._napari.jobs" in graph["napari_xfusion._napari.widget"]
    assert "napari_xfusion.training.calibrate" in graph["napari_xfusion._napari.jobs"]


def test_core_modules_do_not_import_the_gui():
    graph = import_graph()
    for name, imports in graph.items():
        if not name.startswith("napari_xfusion._napari"):
            assert not {m for m in imports if m.startswith("napari_xfusion._napari")}, name


def test_top_level_import_is_cheap_and_the_api_resolves():
    code = (
        "import sys, napari_xfusion as x; "
        "assert 'torch' not in sys.modules and 'dask' not in sys.modules, 'heavy import'; "
        "print(x.__version__); "
        "x.prepare_inputs, x.fuse_to_file, x.create_method, x.TimeModel, x.assess, x.calibrate"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == napari_xfusion.__version__
    assert set(napari_xfusion.__all__) <= set(dir(napari_xfusion))
    with pytest.raises(AttributeError, match="no attribute 'fuse'"):
        napari_xfusion.fuse  # noqa: B018


@pytest.mark.slow
def test_every_module_imports_alone():
    names = sorted(import_graph())
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    for name in names:  # one interpreter each: nothing imported by an earlier module helps
        result = subprocess.run([sys.executable, "-c", code, name], capture_output=True,
                                text=True)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
