"""The library's files stand on each other in one direction: no import cycle, no import of a layer above.

Imports written inside functions count (a lazy import hides a cycle from the interpreter, not from a
reader); imports under ``if TYPE_CHECKING:`` do not. The layers, bottom first, are the README's
architecture picture (ARCHITECTURE.md); a module may import its own layer and the layers below.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bottom first; a module is in the first layer whose prefix it matches
LAYERS: tuple[tuple[str, ...], ...] = (
    ("interp.sites", "interp.interventions", "interp.cayley", "interp.losses", "interp.stats", "interp.splits",
     "interp.tables", "interp.files", "interp.provenance", "interp.geometry", "interp.data", "interp.dilemmas",
     "interp.floor"),
    ("interp.models", "interp.backends"),
    ("interp.steering", "interp.baselines", "interp.adapters", "interp.calibrate", "interp.neurons", "interp.store",
     "interp.train"),
    ("interp.continuations", "interp.measures", "interp.protocol", "interp.generation", "interp.export"),
    ("interp.cli", "interp.train.__main__", "interp.evaluate", "interp.generate", "interp.export.__main__", "interp",
     "analyses"),
)


def modules() -> dict[str, Path]:
    found = {}
    for pkg in ("interp", "analyses"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def layer_of(name: str) -> int:
    # the longest matching prefix decides (interp.train.__main__ is a command line, interp.train a library package)
    best, depth = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best >= 0, f"{name} is in no layer of tests/test_layers.py: add it where it belongs"
    return best


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) for each import in ``path``, inside functions too, not under TYPE_CHECKING."""
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int]] = []

    def target(mod: str) -> str | None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        return mod or None

    def walk(node, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            tc = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import) and not tc:
                out.extend((t, child.lineno) for a in child.names if (t := target(a.name)) and t != name)
            elif isinstance(child, ast.ImportFrom) and not tc:
                base = child.module or ""
                if child.level:
                    parts = name.split(".")[: len(name.split(".")) - child.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for a in child.names:
                    full = f"{base}.{a.name}" if base else a.name
                    t = target(full) if full in known else target(base)
                    if t and t != name:
                        out.append((t, child.lineno))
            walk(child, tc)

    walk(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def test_no_module_imports_a_layer_above_its_own():
    known = modules()
    upward = [f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer_of(name)}) imports {t} (layer {layer_of(t)})"
              for name, path in known.items() for t, line in imports(name, path, known) if layer_of(t) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    known = modules()
    graph = {name: {t for t, _ in imports(name, path, known)} for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(path[path.index(w):] + [w] if w in path else [v, w])
            elif w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layers_name_every_module_and_the_check_sees_lazy_imports(tmp_path):
    known = modules()
    for name in known:
        layer_of(name)  # fails naming a module that belongs to no layer
    lazy = tmp_path / "m.py"
    lazy.write_text("def f():\n    from interp.cli import add_shared_args\n")
    assert imports("interp.sites", lazy, known) == [("interp.cli", 2)]
