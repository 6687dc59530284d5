"""pid_bench's import structure, read from the source: no import circles and no `_private`
name imported from another module. Every import counts, one inside a function too; only
imports under ``if TYPE_CHECKING:`` are left out (they never run, so they close no circle at
run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pid_bench

PACKAGE = "pid_bench"
ROOT = Path(pid_bench.__file__).parent
#: The most lines a pid_bench module may have (issue 26: a module one person can hold).
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` outside ``if TYPE_CHECKING:`` blocks."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)
    return out


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every run-time import of `path`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]).rstrip(".")
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            out += [(f"{base}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                out.append((base, rest))
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    """module -> {pid_bench module it imports: the names it takes}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in MODULES.items():
        edges = graph.setdefault(module, {})
        for target, names in _imports(module, path):
            if target in MODULES:
                edges.setdefault(target, []).extend(names)
    return graph


def test_no_import_circle_in_pid_bench():
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


def test_no_private_name_imported_from_another_module():
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in _graph().items()
        for target, names in edges.items()
        for name in names
        if name.startswith("_") and not name.endswith("__") and target != module
    ]
    assert private == []


def test_no_pid_bench_module_is_over_700_lines():
    long = {
        module: n
        for module, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
