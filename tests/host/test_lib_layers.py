"""The device library's imports flow one way: first boot -> provisioning flow
-> fleetprov and the credential store -> codecs and sockets. Read from the
source (imports inside functions count too), so a new import that turns back
up the stack fails here before it fails on a board's heap."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top of the stack first, as the README's Development section lists them; a
# module may import its own layer or any below it.
LAYERS: list[set[str]] = [
    {"main", "boot"},
    {"firstboot"},
    {"bootflow"},
    {"provisioning", "rotation"},
    {"device"},
    {"fleetprov", "credstore", "credwrite", "mqttlink"},
    {"cbor", "der", "pem", "p256", "csr", "timedsock", "linkfail", "progress", "devconfig"},
    {"runtime", "awsnames", "fleetprov_texts"},
]


def _device_sources() -> dict[str, Path]:
    sources = {p.stem: p for p in sorted((ROOT / "lib").glob("*.py"))}
    sources["main"] = ROOT / "main.py"
    sources["boot"] = ROOT / "boot.py"
    return sources


def _imports(path: Path, names: set[str]) -> tuple[set[str], list[str]]:
    """The device modules `path` imports, and any private name it takes from one."""
    deps: set[str] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.ImportFrom) and node.module in names:
            deps.add(node.module)
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in names and node.attr.startswith("_")
              and not node.attr.startswith("__")):
            private.append(f"{node.value.id}.{node.attr}")
    return deps, private


def _rank(module: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if module in layer:
            return rank
    raise AssertionError(f"lib/{module}.py is in no layer: add it to LAYERS")


def test_every_device_module_has_a_layer() -> None:
    for module in _device_sources():
        _rank(module)


def test_imports_never_turn_back_up_the_stack() -> None:
    sources = _device_sources()
    upward = []
    for module, path in sources.items():
        deps, _ = _imports(path, set(sources))
        upward += [f"{module} -> {d}" for d in sorted(deps) if _rank(d) < _rank(module)]
    assert upward == []


def test_no_import_cycle_within_a_layer() -> None:
    sources = _device_sources()
    graph = {m: _imports(p, set(sources))[0] - {m} for m, p in sources.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join(path + [module])
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_module_takes_another_modules_private_names() -> None:
    sources = _device_sources()
    taken = {m: _imports(p, set(sources))[1] for m, p in sources.items()}
    assert {m: names for m, names in taken.items() if names} == {}


def test_no_module_fills_its_globals_after_import() -> None:
    filled = [f"{path.name}: global {', '.join(node.names)}"
              for path in _device_sources().values()
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Global)]
    assert filled == []
