"""The house: ``shared/`` in layers whose imports run one way, no cycles, no product code that only tests use.

Read statically (every ``import`` in a module, lazy ones inside functions included), so a layer violation
fails here even on a path no other test takes::

    pb  <-  wire  <-  protocol  <-  model
    pb  <-  wire  <-  channel (numpy only) · rpc · cli      (no model semantics)

The proxy and ``meg-ue overhead`` never reach torch: checked on the same graph (and by running them, in
``test_torch_free.py``).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("shared", "edge_server", "channel_emulator", "ue_client", "meg_lab")

#: What each layer of ``shared`` may import (besides itself and third-party code).
ALLOWED: dict[str, set[str]] = {
    "pb": set(),
    "wire": {"pb"},
    "channel": {"pb", "wire"},
    "rpc": {"pb", "wire"},
    "cli": {"pb", "wire", "rpc"},
    "protocol": {"pb", "wire"},
    "model": {"pb", "wire", "protocol"},
}
#: Third-party packages a layer must never import at import time (a function may import torch lazily: the
#: torch adapter ``wire.air.from_air``).
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "wire": {"torch", "diffusers", "transformers"},
    "channel": {"torch", "diffusers", "transformers", "grpc"},
    "protocol": {"diffusers", "transformers"},
    "rpc": {"torch", "diffusers", "transformers"},
    "cli": {"torch", "diffusers", "transformers"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    found = {}
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (``from a.b import c`` gives ``a.b.c`` when that is a module, else ``a.b``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # TYPE_CHECKING blocks are not run
        nodes = [n for n in nodes if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in _modules() else node.module)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "shared" and len(parts) > 1 else None


def test_each_shared_module_belongs_to_a_layer() -> None:
    loose = [m for m in _modules() if m.startswith("shared.") and _layer(m) not in ALLOWED]
    assert not loose, f"modules of shared/ outside every layer: {loose}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_from_below(layer: str) -> None:
    bad = []
    for module, path in _modules().items():
        if _layer(module) != layer:
            continue
        for dep in _imports(path):
            top = dep.split(".")[0]
            if top in PRODUCT and top != "shared":
                bad.append(f"{module} imports {dep} (a process package)")
            elif top == "shared" and _layer(dep) not in (None, layer) and _layer(dep) not in ALLOWED[layer]:
                bad.append(f"{module} imports {dep} (layer {_layer(dep)} is not below {layer})")
            elif top == "tests":
                bad.append(f"{module} imports {dep} (test-only code)")
        bad += [f"{module} imports {d} at import time" for d in _imports(path, top_level_only=True)
                if d.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(layer, set())]
    assert not bad, "\n".join(bad)


def test_product_never_imports_tests() -> None:
    bad = [f"{m} imports {d}" for m, p in _modules().items() for d in _imports(p) if d.split(".")[0] in ("tests", "benchmarks")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    """Module-level imports (what runs at import time) form no cycle."""
    graph = {m: {d for d in _imports(p, top_level_only=True) if d in _modules() and d != m} for m, p in _modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _reach(start: str) -> set[str]:
    """Everything ``start`` imports at import time, transitively (third-party names as their top package)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m in _modules():
            todo.extend(_imports(_modules()[m], top_level_only=True))
            # a package's __init__ runs before its submodules
            parent = m.rsplit(".", 1)[0]
            if "." in m and parent in _modules():
                todo.append(parent)
        else:
            seen.add(m.split(".")[0])
    return seen


@pytest.mark.parametrize("entry", ["channel_emulator.cli", "channel_emulator.proxy", "ue_client.overhead"])
def test_torch_free_entry_points_do_not_reach_torch(entry: str) -> None:
    assert "torch" not in _reach(entry), f"{entry} reaches torch at import time"


def test_layer_test_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: a wire module importing the model layer is caught."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from shared.model.ops import ModelParts\n")
    assert "shared.model.ops" in _imports(bad)
    assert _layer("shared.model.ops") not in ALLOWED["wire"]
