"""The package's shape: layers without import cycles, errors at the bottom, lazy imports
only for heavy third-party packages. Read from the source with ``ast``, imports inside
functions included, so a cycle cannot hide in a function body."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import backbones

PACKAGE = Path(backbones.__file__).parent
ROOT = "backbones"

# Imports inside functions are for deferring these, never for dodging a cycle.
DEFERRABLE = {"timm", "safetensors", "huggingface_hub", "torchvision", "onnxruntime", "openvino"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """``(imported module, inside a function, line)`` for each import in module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):  # never runs: annotations only
                continue
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                for alias in child.names:  # `from backbones import errors` imports a module
                    full = f"{module}.{alias.name}"
                    found.append((full if full in MODULES else module, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        deps = {m for m, _, _ in _imports(name) if m in MODULES and m != name}
        # Importing a submodule from outside its package runs the package's __init__
        # first (inside the package, that __init__ is already running).
        for dep in list(deps):
            parent = dep.rpartition(".")[0]
            if parent in MODULES and not f"{name}.".startswith(f"{parent}."):
                deps.add(parent)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_only_defer_heavy_third_party_packages():
    lazy = [
        f"{name}:{line} imports {module}"
        for name in MODULES
        for module, in_function, line in _imports(name)
        if in_function and module.split(".")[0] not in DEFERRABLE
    ]
    assert lazy == []


@pytest.mark.parametrize("name", ["backbones.errors", "backbones.features", "backbones._checks"])
def test_bottom_modules_import_nothing_of_ours(name):
    assert [m for m, _, _ in _imports(name) if m.split(".")[0] == ROOT] == []


def test_the_registry_container_knows_only_the_errors():
    ours = {m for m, _, _ in _imports("backbones.registry") if m.split(".")[0] == ROOT}
    assert ours == {"backbones.errors"}


def test_every_error_class_lives_in_the_errors_module():
    defined = {
        f"{name}.{node.name}"
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(b, ast.Name) and (b.id.endswith(("Error", "Warning"))) for b in node.bases
        )
    }
    assert {d for d in defined if not d.startswith("backbones.errors.")} == set()


def test_low_layers_do_not_import_the_factory_or_the_catalog():
    low = [
        "backbones.registry",
        "backbones.resnet",
        "backbones.blocks",
        "backbones.options",
        "backbones.plugin_manager",
        "backbones.contract",
        "backbones.norm",
    ]
    graph = _graph()
    for name in low:
        reach: set[str] = set()
        todo = [name]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in reach:
                    reach.add(dep)
                    todo.append(dep)
        assert not reach & {"backbones.factory", "backbones.catalog"}, name


def test_import_backbones_imports_none_of_its_modules_until_a_name_is_used():
    # The facade resolves names lazily (PEP 562): `import backbones` stays cheap.
    code = (
        "import sys, backbones\n"
        "print(sorted(m for m in sys.modules if m.startswith('backbones.')))\n"
        "backbones.create_backbone\n"
        "print('backbones.factory' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_every_public_name_resolves_and_unknown_ones_raise_attribute_error():
    for name in backbones.__all__:
        assert getattr(backbones, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'create_backbones'"):
        backbones.create_backbones  # noqa: B018


# The layers ARCHITECTURE.md draws, bottom (0) to top: a module imports only from its
# own layer or below.
LAYER_OF = {
    "backbones.errors": 0, "backbones.features": 0, "backbones._checks": 0,
    "backbones.registry": 1, "backbones.layers": 1, "backbones.norm": 1,
    "backbones.hookspecs": 1, "backbones._spellings": 1,
    "backbones.blocks": 2, "backbones.variants": 2, "backbones.weights": 2,
    "backbones.weights.sources": 2, "backbones.weights.formats": 2,
    "backbones.weights.in_chans": 2, "backbones.weights.loading": 2,
    "backbones.weights.config": 2, "backbones.weights.convert": 2,
    "backbones.zoo": 2, "backbones.zoo.pyramid": 2,
    "backbones.options": 3,
    "backbones.namespace": 4, "backbones.zoo.extractor": 4, "backbones.zoo.timm_models": 4,
    "backbones.zoo.tv_models": 4,
    "backbones.resnet": 4, "backbones.contract": 4, "backbones.heads": 4,
    "backbones.heads.classification": 4, "backbones.heads.fpn": 4,
    "backbones.heads.segmentation": 4,
    "backbones.catalog": 5, "backbones.plugin_manager": 5, "backbones._builtins": 5,
    "backbones.factory": 6, "backbones.weights.pretrained": 6,
    "backbones.model": 7, "backbones.saving": 7, "backbones.inference": 7,
    "backbones.adapters": 7, "backbones.info": 7, "backbones.zoo.probe": 7,
    "backbones.training": 7,
    "backbones": 8, "backbones.cli": 8, "backbones.bench": 8, "backbones.testing": 8,
    "backbones.__main__": 8,
}  # fmt: skip


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    assert set(LAYER_OF) == set(MODULES)
    upward = [
        f"{name} (layer {LAYER_OF[name]}) imports {dep} (layer {LAYER_OF[dep]})"
        for name, deps in _graph().items()
        for dep in deps
        if LAYER_OF[dep] > LAYER_OF[name]
    ]
    assert upward == []
