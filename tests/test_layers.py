"""The layering, pinned: imports between the top-level folders run one way, and the pure
cores touch no I/O, no clock and no event loop (the house style's three layers).

Read from the source with ``ast`` (no import side effects), so a forbidden import fails
here even when it sits inside a function.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom: a folder may import only folders after it in this list.
LAYERS = ["client", "lab", "system", "health", "forwarder", "dns", "pool", "interceptor"]

# Pure cores: bytes, state machines and renderers; time comes in as an argument.
PURE = [
    "interceptor/checksum.py", "interceptor/packet.py", "interceptor/nat.py",
    "interceptor/nat6.py", "interceptor/policy.py",
    "dns/message.py", "dns/fakeip.py", "dns/stubquery.py",
    "pool/plan.py", "pool/connect.py", "pool/upstream.py", "pool/errors.py",
    "pool/keepalive.py", "pool/counters.py", "pool/proxyurl.py", "pool/h1wire.py", "pool/h1write.py",
    "health/leaks.py", "health/state.py", "health/signals.py", "health/leakwatch.py",
    "system/netchange.py", "system/uncovered.py",
    "forwarder/intercept.py", "forwarder/h2serve_core.py",
]
FORBIDDEN = {"asyncio", "socket", "os", "subprocess", "time", "select", "threading"}


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute; relative ones resolved in its folder)."""
    tree = ast.parse(path.read_text(), str(path))
    folder = path.parent.name
    names: set[str] = set()
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # `if TYPE_CHECKING:` imports exist for annotations, never at run time
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, inside atlantic.<folder>
                base = f"atlantic.{folder}" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _folder_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "atlantic" and parts[1] in LAYERS:
        return parts[1]
    return None


def _folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {f: set() for f in LAYERS}
    for folder in LAYERS:
        for path in (ROOT / folder).glob("*.py"):
            for name in _imports(path):
                target = _folder_of(name)
                if target is not None and target != folder:
                    graph[folder].add(target)
    return graph


def test_every_top_level_package_is_in_the_layer_list():
    """A new top-level package must be placed in LAYERS (and so in the one-way order)."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert {v for k, v in package_dir.items() if k != "atlantic"} == set(LAYERS)
    assert all(package_dir[f"atlantic.{folder}"] == folder for folder in LAYERS)


def test_folders_import_only_folders_below_them():
    """client on top ... interceptor at the bottom: no folder imports one above it."""
    graph = _folder_graph()
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if LAYERS.index(b) < LAYERS.index(a)]
    assert upward == []


def test_folder_graph_has_no_cycle():
    """The folder import graph is a DAG (checked directly, whatever the list says)."""
    graph = _folder_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_pool_never_imports_the_forwarder():
    """The forwarder sits on the pool, never the other way round."""
    assert "forwarder" not in _folder_graph()["pool"]


def test_no_module_cycle_inside_a_folder_between_pool_and_background():
    """The pool's background loops do not import the pool module back (not even for types)."""
    names = _imports(ROOT / "pool" / "background.py") if (ROOT / "pool" / "background.py").exists() else set()
    assert not any(n.startswith("atlantic.pool.pool") for n in names)


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_io_clock_or_loop(module):
    """A pure core (and every project module it pulls in) imports no asyncio, socket, os,
    subprocess or time: the clock and I/O come in from an adapter."""
    seen: set[Path] = set()
    todo = [ROOT / module]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"
            folder = _folder_of(name)
            if folder is None:
                continue
            rest = name.split(".")[2:]
            for i in range(len(rest), 0, -1):  # atlantic.pool.plan.PoolKey -> pool/plan.py
                candidate = ROOT / folder / ("/".join(rest[:i]) + ".py")
                if candidate.exists():
                    todo.append(candidate)
                    break
