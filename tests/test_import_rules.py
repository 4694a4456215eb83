"""The layers, checked on every import statement of the package, function-level ones included.

``tests/test_layers.py`` checks what a fresh interpreter loads; imports inside functions hide edges from
it, so this reads the source instead. Imports under ``if TYPE_CHECKING:`` are annotations, not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imgsynth"

# (layer, layers it must never import)
RULES = [
    ("imgsynth.metrics", ("imgsynth.pipelines", "imgsynth.experiments", "imgsynth.reports", "imgsynth.cli")),
    ("imgsynth.pipelines", ("imgsynth.metrics", "imgsynth.experiments", "imgsynth.reports", "imgsynth.cli")),
    # distributed/ knows backends, not generator kinds
    ("imgsynth.distributed", ("imgsynth.pipelines.conditional", "imgsynth.pipelines.text2image",
                              "imgsynth.pipelines.gaussian", "imgsynth.pipelines.kde", "imgsynth.pipelines.per_class",
                              "imgsynth.experiments", "imgsynth.reports", "imgsynth.cli")),
    # the loop runs generations; whoever ran it (the CLI) builds the reports
    ("imgsynth.experiments", ("imgsynth.reports", "imgsynth.cli")),
    # trackers read a finished run (and its reports) through the run folder; the loop only calls back
    ("imgsynth.tracking", ("imgsynth.cli",)),
    ("imgsynth.reports", ("imgsynth.cli",)),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(module: str) -> set[str]:
    """The imgsynth modules ``module`` imports anywhere in its source (a name from a package counts as the
    submodule when there is one of that name, else as the package)."""
    path = MODULES[module]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    edges = set()
    for name in found:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("imgsynth") and name != module:
            edges.add(name)
    return edges


GRAPH = {module: _imports(module) for module in MODULES}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer, forbidden", RULES, ids=[layer for layer, _ in RULES])
def test_a_layer_never_imports_the_layers_above_it(layer, forbidden):
    bad = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() if _within(module, layer)
                 for target in targets if any(_within(target, f) for f in forbidden))
    assert not bad, bad


def test_the_library_never_imports_the_cli():
    # imgsynth/__main__.py is `python -m imgsynth`, the CLI's entry point, not library code.
    bad = sorted(f"{module} imports {target}" for module, targets in GRAPH.items()
                 if not _within(module, "imgsynth.cli") and module != "imgsynth.__main__"
                 for target in targets if _within(target, "imgsynth.cli"))
    assert not bad, bad


def test_no_module_imports_itself_through_others():
    """No cycle between modules: Tarjan's strongly connected components of the import graph are all single."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    assert not cycles, cycles


def test_the_checker_sees_function_level_imports(tmp_path):
    """The graph includes an import inside a function (the kind the runtime check cannot see)."""
    assert "imgsynth.pipelines.finetune" in GRAPH["imgsynth.pipelines.text2image.kind"]  # inside Text2ImageKind.fit
    assert "imgsynth.pipelines.text2image.sampling" not in GRAPH["imgsynth.pipelines.text2image.options"]
