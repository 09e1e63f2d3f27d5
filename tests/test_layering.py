"""The package's layers import downwards only, with no cycles — function-level imports included (an AST walk)."""

import ast
import sys
from pathlib import Path

import splice

PACKAGE = Path(splice.__file__).parent
# Lower numbers are lower layers: a module may import from its own layer or below, never above.
LAYERS = {
    0: ["_compat", "_version", "encoders", "token_ids", "processing", "onednn", "precision", "data_io"],
    1: ["conditioning", "inference"],
    2: ["configuration", "models", "registry"],
    3: ["data", "retrieval", "training", "flax", "tf", "serve", "export"],
    3.5: ["scale"],  # Ray: batch captioning and serve replicas over the layer-3 modules (serve, retrieval)
    4: ["cli"],
    5: ["__init__"],  # the package's face
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (layer, len(prefix))
    assert best is not None, f"splice.{module} is in no layer: add it to LAYERS"
    return best[0]


def _imports(path: Path, module: str) -> set[str]:
    """splice modules imported anywhere in the file (top level or inside functions)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name[len("splice.") :] for a in node.names if a.name.startswith("splice.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("splice"):
                target = node.module[len("splice.") :] if node.module != "splice" else ""
            else:
                continue
            if node.module is None or target == "":  # `from . import x`: the submodules named
                found |= {".".join(filter(None, [target, a.name])) for a in node.names}
            else:
                found.add(target)
    return {name for name in found if name and (PACKAGE / name.replace(".", "/")).with_suffix(".py").exists()
            or (PACKAGE / name.replace(".", "/")).is_dir()}  # fmt: skip


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph[module] = _imports(path, module) - {module}
    return graph


def test_every_import_points_down_or_sideways():
    upward = [
        f"splice.{module} (layer {_layer(module)}) imports splice.{target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if target.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(target) == 1 and not node.startswith(target + "."):
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]) if target in stack else target)
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself can fail: an upward import hidden inside a function of a lower layer is found."""
    source = tmp_path / "probe.py"
    source.write_text("import torch\n\ndef f():\n    from ..cli import main\n    from . import loaders\n")
    assert _imports(source, "data.probe") == {"cli", "data.loaders"}
    assert _layer("cli") > _layer("data")  # so placed in data/, it would be reported upward


def test_the_console_script_is_covered_and_imports_only_the_standard_library_at_the_top():
    """`splice_cli` (installed beside the package, the `splice` script) is the layer above `cli`: the command overview
    (the one command table) is built from the standard library alone; a chosen command goes through `splice.cli`."""
    path = PACKAGE.parent / "splice_cli.py"
    tree = ast.parse(path.read_text())
    top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top - {"__future__"} <= set(sys.stdlib_module_names), top
    inner = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert {name for name in inner if name.startswith("splice")} == {"splice.cli"}
