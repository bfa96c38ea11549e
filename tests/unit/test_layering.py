"""The import graph stays a tree of layers: no cycles between modules or between the core's packages, and the core
never reaches up.

Read from the source (every `import` statement, in functions too, so an import moved into a function to dodge a cycle
still counts): the test needs no imports of its own and runs in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rollouts", "commands", "flows", "tasks", "blocks", "deployments")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str) -> set[str]:
    """Project modules `path` imports (relative imports resolved; `from pkg import mod` counts as pkg.mod)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        edges[name] = {m for m in imports(path, name) if m in files and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules() -> None:
    # a package's __init__ re-exporting its own modules is not a cycle of jobs: leave those edges out
    edges = {name: {m for m in targets if not m.startswith(name + ".")} for name, targets in graph().items()}
    assert cycles(edges) == []


def package_of(module: str) -> str:
    """The folder of rollouts a module belongs to: `rollouts.process.api` -> `rollouts.process`; a top-level module of
    rollouts (`rollouts.config`) is a room of its own."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Arrows between rollouts' subpackages and top-level modules: A -> B when any module of A imports one of B."""
    edges: dict[str, set[str]] = {}
    for name, targets in graph().items():
        if name.split(".")[0] != "rollouts" or name == "rollouts":
            continue
        edges.setdefault(package_of(name), set()).update(
            package_of(m) for m in targets if m.startswith("rollouts.") and package_of(m) != package_of(name)
        )
    return edges


def test_no_import_cycles_between_the_packages_of_the_core() -> None:
    # modules may form no cycle and still leave two packages pointing at each other (process/api -> quality while
    # quality/loader -> process/readers): the packages must stack too, each importing only those below it
    edges = package_graph()
    found = cycles(edges)
    arrows = {pkg: sorted(t for t in edges[pkg] if any(pkg in c and t in c for c in found)) for pkg in edges}
    assert found == [], {pkg: back for pkg, back in arrows.items() if back}


def test_the_core_never_imports_the_cli_the_flows_or_the_blocks() -> None:
    reaching_up = {
        name: sorted(m for m in targets if m.split(".")[0] != "rollouts")
        for name, targets in graph().items()
        if name.split(".")[0] == "rollouts"
    }
    assert {name: up for name, up in reaching_up.items() if up} == {}


def test_the_collector_never_imports_the_stages() -> None:
    # the stages hand the collector what it runs (rollouts/collector/engine.py): it never reaches for them
    collector = {n: t for n, t in graph().items() if n.startswith("rollouts.collector")}
    assert {n: sorted(m for m in t if m.startswith("rollouts.stages")) for n, t in collector.items()} == {
        n: [] for n in collector
    }
