"""Imports among aserve's modules point one way: no cycles, and protocols stay below the server.

The graph is read from the source with `ast`. Counted: every import that runs, at module level
or inside a function (a deferred import is still a dependency, and a cycle through one only
waits for the first call to bite). Not counted: imports under `if TYPE_CHECKING:`, which never
run; type hints may name a module that imports this one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"
PACKAGE = SRC / "aserve"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (their `else:` branch does run)."""
    found: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def imports_of(name: str) -> set[str]:
    """The aserve modules `name` imports at run time (a package's __init__ counts as a module)."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    return {target for target in targets if target in MODULES and target != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_graph_is_read() -> None:
    # The parser sees the edges we know exist, so an empty graph cannot pass the tests below.
    assert "aserve.config" in GRAPH["aserve.server"]
    assert "aserve.protocols.body" in GRAPH["aserve.protocols.cycle"]
    assert "aserve.protocols.cycle" in GRAPH["aserve.protocols.http"]
    assert "aserve.protocols.websocket" in GRAPH["aserve.protocols.http"]  # function-local
    assert "aserve.state" not in GRAPH["aserve.protocols.http"]  # TYPE_CHECKING only


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_aserve_modules() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# What sits above the protocols: they see a ServerState, never the CLI, config or supervisor.
ABOVE_PROTOCOLS = (
    "aserve",
    "aserve.cli",
    "aserve.entry",
    "aserve.config",
    "aserve.server",
    "aserve.settings",
    "aserve.testing",
    "aserve.supervisor",
    "aserve.reload",
)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("aserve.protocols.")))
def test_protocols_do_not_import_upwards(name: str) -> None:
    assert not GRAPH[name] & set(ABOVE_PROTOCOLS), GRAPH[name]


def reachable(name: str) -> set[str]:
    """Every module `name` imports, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


# The modules that own one protocol's bytes: HTTP/1.1 and any later version (http*.py), the
# file copy below HTTP/1.1's framing, WebSocket, the PROXY protocol header.
FRAMING = {
    name
    for name in MODULES
    if name.startswith("aserve.protocols.")
    and (
        name.rpartition(".")[2].startswith("http")
        or name.rpartition(".")[2] in ("sendfile", "websocket", "proxy_protocol")
    )
}


def test_framing_modules_are_found() -> None:
    assert {"aserve.protocols.http", "aserve.protocols.websocket"} <= FRAMING


@pytest.mark.parametrize("name", ["aserve.protocols.cycle", "aserve.protocols.extensions"])
def test_the_request_cycle_imports_no_framing(name: str) -> None:
    """The request cycle and the extensions serve every HTTP version: neither may reach a
    protocol's framing, even through another module."""
    assert not reachable(name) & FRAMING, reachable(name) & FRAMING
