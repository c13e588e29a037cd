"""keras_kd's modules import each other without a cycle, and stay short.

The import graph is read from the source with `ast` (nothing is imported):
every `import keras_kd.x`, `from keras_kd.x import y` and relative import
(`from . import y`, `from ..x import y`), at module level or inside a
function. An edge A -> B means that A imports the module B, or names from
B (`from B import name` where `B.name` is not a module of its own).
Importing `keras_kd.x.y` runs the packages' `__init__.py` files first, but
that is not an edge: a package's `__init__.py` that imports its own modules
would otherwise form a cycle with each of them.

Run as a script (`python tests/test_imports.py`) it prints the cycles, or
says there are none.
"""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "keras_kd"
MAX_LINES = 500


def modules():
    """`{dotted module name: path}` of every module under `keras_kd/`."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node, module, path, known):
    """The modules of `known` that the import statement `node` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if node.level:
        package = module.split(".")
        if path.name != "__init__.py":
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            targets.append(f"{base}.{alias.name}")
        elif base in known:
            targets.append(base)
    return targets


def import_graph():
    """`{module: set of the keras_kd modules it imports}`."""
    known = modules()
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _imported(node, module, path, known)
            if target != module or isinstance(node, ast.Import)
        }
    return graph


def cycles(graph):
    """One cycle (a list of modules, first == last) per cyclic component."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for component in components:
        start = min(component)
        # The shortest way back to `start` inside the component.
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for target in sorted(graph[node] & component):
                if target == start:
                    found.append(paths[node] + [start])
                    queue = []
                    break
                if target not in seen:
                    seen.add(target)
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    # `from keras_kd.export.command import ...` inside a function.
    assert "keras_kd.export.command" in graph["keras_kd.cli"]
    # `from keras_kd.losses import registry`: the module registry.
    assert "keras_kd.losses.registry" in graph["keras_kd.cli.main_job"]
    # `from keras_kd.export.base import FORMATS`: names from a module.
    assert "keras_kd.export.base" in graph["keras_kd.export.student"]
    # `from keras_kd.cli import main`: names from a package's __init__.py.
    assert graph["keras_kd.cli.__main__"] == {"keras_kd.cli"}
    known = modules()
    path = ROOT / "keras_kd" / "losses" / "logits.py"
    package = ROOT / "keras_kd" / "losses" / "__init__.py"
    for source, module, where, expected in (
        ("from .base import X", "keras_kd.losses.logits", path, "base"),
        ("from . import registry", "keras_kd.losses.logits", path, "registry"),
        ("from .. import data", "keras_kd.losses.logits", path, "data"),
        ("from . import registry", "keras_kd.losses", package, "registry"),
        ("import keras_kd.taps", "keras_kd.losses.logits", path, "taps"),
        ("from keras_kd import taps", "keras_kd.losses", package, "taps"),
        ("import keras_kd", "keras_kd.losses.logits", path, ""),
    ):
        node = ast.parse(source).body[0]
        targets = _imported(node, module, where, known)
        names = {
            "base": "keras_kd.losses.base",
            "registry": "keras_kd.losses.registry",
            "data": "keras_kd.data",
            "taps": "keras_kd.taps",
            "": "keras_kd",
        }
        assert targets == [names[expected]], (source, targets)


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "d"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in keras_kd:\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


def test_no_module_is_too_long():
    long = {}
    for path in modules().values():
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            long[name] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"


if __name__ == "__main__":
    found = cycles(import_graph())
    for cycle in found:
        print(" -> ".join(cycle))
    if not found:
        print(f"no import cycle among the {len(modules())} modules of keras_kd")
    sys.exit(1 if found else 0)
