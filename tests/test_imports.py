"""The package's import graph, read from its source: no circles, and the layers hold.

The parent (pizauth/priv/), the network child (pizauth/net/) and the command child
(pizauth/cmd/) are separate processes that share only the modules of the shared layer; a
client shares with them only those too. An import across those lines would put one side's
code (and its secrets' handling) into the other's process, so each rule below is a
boundary of the privilege separation, not a matter of taste. Every import counts: at
module level, inside a function (imported late for speed) and under TYPE_CHECKING (a
circle there is a circle in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pizauth"

# -- the layers, as data: a name ending in ".*" is every module under that package ------------

LAYERS: dict[str, tuple[str, ...]] = {
    # The privileged parent: tokens, decisions, the token store.
    "priv": ("pizauth.priv", "pizauth.priv.*"),
    # The network child and its workers.
    "net": ("pizauth.net", "pizauth.net.*"),
    # The command child, which serves the control socket.
    "cmd": ("pizauth.cmd", "pizauth.cmd.*"),
    # What every process may use: frames, limits, paths, confinement, plain helpers.
    "shared": (
        "pizauth",
        "pizauth.config",
        # The control socket's client side (every client's checks and exchange): shared
        # because pizauth.paths needs its length limit; the shared rule binds it more
        # tightly than the client's would.
        "pizauth.control",
        "pizauth.ipc",
        "pizauth.landlock",
        "pizauth.limits",
        "pizauth.paths",
        "pizauth.process",
        "pizauth.runtime",
        "pizauth.safetext",
        "pizauth.sandbox",
        "pizauth.text",
        "pizauth.timeouts",
        "pizauth.uri",
    ),
    # The client: the command line, the lean `show`, the requests to the server.
    "client": (
        "pizauth.cli",
        "pizauth.client",
        "pizauth.fastshow",
        "pizauth.unit",
    ),
    # `pizauth server`: binds the sockets, detaches, runs the parent.
    "server": ("pizauth.server",),
}

# What each layer must not import (directly: what those import is their own layer's rule).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "priv": ("net", "cmd", "client", "server"),
    "net": ("priv", "cmd", "client", "server"),
    "cmd": ("priv", "net", "client", "server"),
    "shared": ("priv", "net", "cmd", "client", "server"),
    "client": ("priv", "net", "cmd", "server"),
}

# Inside the parent, its packages from the bottom up: each may import those before it, never
# one after it. What the parent holds; the user's commands it runs; the tokens it keeps
# outside itself (the store, dumps); the flows that move tokens. Above them all, the
# modules at the top of pizauth/priv/ (the loop, the children, the client requests), which
# may use any of them.
PRIV_LAYERS = (
    "pizauth.priv.state",
    "pizauth.priv.run",
    "pizauth.priv.storage",
    "pizauth.priv.flows",
)

# Imports a rule above forbids but which are the design, each with why.
ALLOWED: dict[tuple[str, str], str] = {
    ("pizauth.cli", "pizauth.server"): (
        "`pizauth server` starts the server: the one way from the client side to the "
        "parent's code, imported only when that command runs"
    ),
}


# -- the graph ---------------------------------------------------------------------------------


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `name` (at `path`) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # Relative: `from . import x` in pizauth.priv.a is pizauth.priv.x.
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pizauth.priv.storage import dump` imports the module
            # pizauth.priv.storage.dump.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers_of(module: str) -> list[str]:
    """The layers `module` is listed in (exactly one, for a module of the package)."""
    return [
        layer
        for layer, members in LAYERS.items()
        if any(m == module or (m.endswith(".*") and module.startswith(m[:-1])) for m in members)
    ]


def layer_of(module: str) -> str | None:
    homes = layers_of(module)
    return homes[0] if len(homes) == 1 else None


# -- the tests ---------------------------------------------------------------------------------


def test_every_kind_of_import_is_in_the_graph() -> None:
    graph = import_graph()
    assert "pizauth.ipc" in graph["pizauth.priv.parent"]  # at module level
    assert "pizauth.cli" in graph["pizauth.fastshow"]  # inside a function: the hand-over
    assert "pizauth.priv.keptlog" in graph["pizauth.priv.commands"]  # under TYPE_CHECKING
    # `from pizauth.priv.storage import dump`, inside a function:
    assert "pizauth.priv.storage.dump" in graph["pizauth.priv.commands"]


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_every_module_is_in_exactly_one_layer() -> None:
    for module in import_graph():
        homes = layers_of(module)
        assert len(homes) == 1, f"{module} is in {homes or 'no layer'}: add it to LAYERS"


def test_the_layers_hold() -> None:
    crossings = []
    for module, imported in sorted(import_graph().items()):
        layer = layer_of(module)
        for target in sorted(imported):
            if layer_of(target) in FORBIDDEN.get(layer or "", ()) and (
                (module, target) not in ALLOWED
            ):
                crossings.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    assert crossings == []


def test_every_allowed_crossing_is_still_made() -> None:
    # An exception nobody needs any more is a hole left open: remove it.
    graph = import_graph()
    for module, target in ALLOWED:
        assert target in graph[module], f"{module} no longer imports {target}"


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    # The rules applied to a package where the command child imports the parent's code.
    package = tmp_path / "pizauth"
    for sub in ("", "priv", "cmd"):
        (package / sub).mkdir(exist_ok=True)
        (package / sub / "__init__.py").write_text("")
    (package / "priv" / "tokens.py").write_text("")
    (package / "cmd" / "child.py").write_text(
        "def handle():\n    from ..priv import tokens\n    return tokens\n"
    )
    graph = import_graph(package)
    assert graph["pizauth.cmd.child"] == {"pizauth.priv.tokens"}
    assert layer_of("pizauth.priv.tokens") in FORBIDDEN[layer_of("pizauth.cmd.child") or ""]


def priv_layer(module: str) -> int | None:
    """The rank of `module`'s package in PRIV_LAYERS; len(PRIV_LAYERS) for a module at
    the top of pizauth/priv/; None outside the parent."""
    for rank, package in enumerate(PRIV_LAYERS):
        if module == package or module.startswith(package + "."):
            return rank
    if module == "pizauth.priv" or module.startswith("pizauth.priv."):
        return len(PRIV_LAYERS)
    return None


def test_nothing_in_the_parent_imports_up_its_layers() -> None:
    upwards = []
    for module, imported in sorted(import_graph().items()):
        rank = priv_layer(module)
        if rank is None:
            continue
        for target in sorted(imported):
            target_rank = priv_layer(target)
            if target_rank is not None and target_rank > rank:
                upwards.append(f"{module} imports {target}")
    assert upwards == []


def test_every_package_of_the_parent_is_a_layer() -> None:
    packages = {
        name
        for name, path in module_names().items()
        if path.name == "__init__.py" and name.startswith("pizauth.priv.")
    }
    assert packages == set(PRIV_LAYERS)
    assert priv_layer("pizauth.priv.parent") == len(PRIV_LAYERS)
    assert priv_layer("pizauth.priv.state.tokens") == 0
