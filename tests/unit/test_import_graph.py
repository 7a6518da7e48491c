"""The package's layering: no import cycle, and nothing below the API imports it.

The graph is read from the source (every import, also those inside functions, except the ones
only type checkers see), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "dreamforge"
# The domain and infrastructure the API is built on; none of them may know the API exists.
BELOW_API = ("jobs", "worker", "engines", "registry", "storage", "events", "webhooks", "db", "observability")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> set[str]:
    """The dreamforge modules `module` imports."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # `from . import x` is the current package; each further dot goes one up.
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                # `from pkg import name` imports the module pkg.name when there is one.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    return components


def test_the_graph_was_read() -> None:
    assert "dreamforge.runtime" in GRAPH["dreamforge.api.app"]
    # A lazy import inside a function counts too.
    assert "dreamforge.api.app" in GRAPH["dreamforge.cli.main"]


def test_no_module_imports_itself_back() -> None:
    assert _cycles() == []


def test_nothing_below_the_api_imports_it() -> None:
    offenders = {
        module: sorted(t for t in targets if t.startswith("dreamforge.api"))
        for module, targets in GRAPH.items()
        if module.split(".")[1:2] and module.split(".")[1] in BELOW_API
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_only_the_worker_command_builds_the_worker_app() -> None:
    # The API publishes through broker/; importing the worker's app would register its task and
    # connect worker signal handlers inside the API process.
    importers = sorted(m for m, targets in GRAPH.items() if "dreamforge.worker.celery_app" in targets)
    assert importers == ["dreamforge.cli.main"]
