"""The library's layout as docs/architecture.md draws it: layers pointing one way, no cycle, no path hacks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugins" / "streamflow_mlops"
# Bottom to top; a module may import its own layer or any layer below it.
LAYERS = {
    "config": 0,
    "extensions": 1,
    "synthetic": 1,
    "data": 1,
    "features": 2,
    "model": 3,
    "monitoring": 4,
    "serving": 5,
    "pipelines": 6,
    "platform": 7,
}
MAX_LINES = 500


def library_modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def library_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamflow_mlops."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("streamflow_mlops.")}
    return found


def test_every_subpackage_is_a_layer_with_a_docstring():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS)
    for name in subpackages:
        assert ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())), name


@pytest.mark.parametrize("module", sorted(m for m in library_modules() if m.count(".") >= 2))
def test_imports_point_down_the_layers(module):
    layer = LAYERS[module.split(".")[1]]
    upward = [
        target
        for target in library_imports(library_modules()[module])
        if target.split(".")[1] in LAYERS and LAYERS[target.split(".")[1]] > layer
    ]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_cycle_between_modules():
    modules = library_modules()
    graph = {name: {t for t in library_imports(path) if t in modules} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in graph[node]:
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*trail, target])}"
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_modules_stay_small():
    long = {
        name: n for name, path in library_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by concern: {long}"


def edits_the_import_path(tree: ast.AST) -> bool:
    """A call like `<sys>.path.<insert|append|extend>(...)`: a module found by path, not installed."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("insert", "append", "extend")
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "path"
        and isinstance(node.func.value.value, ast.Name)
        and node.func.value.value.id == "sys"
        for node in ast.walk(tree)
    )


def test_the_path_check_sees_an_edit():
    edit = ".".join(("sys", "path", "insert"))  # spelled out, this line would be an edit itself to a text search
    assert edits_the_import_path(ast.parse(f"import sys\n{edit}(0, 'plugins')"))
    assert not edits_the_import_path(ast.parse("import os\nos.path.join('a', 'b')"))


def test_nothing_in_the_repository_edits_the_import_path():
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("plugins", "dags", "bentos", "feature_repo", "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
        if edits_the_import_path(ast.parse(path.read_text()))
    ]
    assert offenders == []


FENCED = ("feast", "bentoml", "great_expectations", "uvicorn", "mlflow", "evidently", "airflow")


def private_uses(path: Path) -> list[str]:
    """Imports of a third-party library's private names or modules (a leading underscore)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FENCED:
            parts = node.module.split(".")
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            found += [node.module] if any(p.startswith("_") for p in parts) else []
        elif isinstance(node, ast.Import):
            found += [
                a.name
                for a in node.names
                if a.name.split(".")[0] in FENCED and any(p.startswith("_") for p in a.name.split("."))
            ]
    return found


def test_third_party_internals_are_reached_only_from_extensions():
    """The rest of the library (and the service) uses public APIs; extensions/ is the one boundary."""
    sources = {**library_modules(), "bentos.churn_service.service": REPO / "bentos" / "churn_service" / "service.py"}
    outside = {
        module: uses
        for module, path in sources.items()
        if not module.startswith("streamflow_mlops.extensions.") and (uses := private_uses(path))
    }
    assert not outside, outside
