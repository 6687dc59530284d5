"""The metrics package's import structure (DESIGN.md: no import circles, no `_private` names
imported across modules), read from the source: every import counts, also one inside a
function."""

from __future__ import annotations

import ast
from pathlib import Path

import pid_bench

PACKAGE = "pid_bench.metrics"
FOLDER = Path(pid_bench.__file__).parent / "metrics"


def _module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of `path`."""
    modules = {_module_name(p) for p in FOLDER.glob("*.py")}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package (every module here is at its top)
                base = ".".join([PACKAGE, base]).rstrip(".")
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in modules]
            out += [(f"{base}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                out.append((base, rest))
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    """module -> {package module it imports: the names it takes}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(FOLDER.glob("*.py")):
        edges = graph.setdefault(_module_name(path), {})
        for target, names in _imports(path):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                edges.setdefault(target, []).extend(names)
    return graph


def test_no_import_circle_in_the_metrics_package():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, {}):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_private_name_imported_from_another_metrics_module():
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in _graph().items()
        for target, names in edges.items()
        for name in names
        if name.startswith("_") and target != module
    ]
    assert private == []
