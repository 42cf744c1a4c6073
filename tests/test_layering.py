"""The package's layers, checked on every import statement (lazy ones included).

``../shared/DESIGN.md`` orders the layers; a module may import its own layer and the layers
below it, never one above, and the module graph has no cycle. Imports under
``if TYPE_CHECKING:`` are annotations only and are skipped. The root package
(``canvas_engineering/__init__.py``) re-exports everything and is outside the layers: no
module may import it.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = "canvas_engineering"
#: top-level folders installed into the import root (pyproject ``package-dir``)
MAPPED = {"plugins": f"{ROOT}.plugins", "datamodules": f"{ROOT}.datamodules", "callbacks": f"{ROOT}.callbacks"}

#: Lowest first: the layer of each top-level module or subpackage of the import root.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("_version", "errors", "validation", "_atomic", "_json_source", "plugin_host")),
    ("declaration", ("declare",)),
    ("typed and program", ("typed", "program")),
    ("compilation", ("compilation",)),
    ("execution", ("attention",)),
    ("models", ("models", "integrations")),
    ("training", ("training", "viz")),
    ("callbacks and data", ("callbacks", "datamodules")),
    ("policy", ("policy",)),
    ("plugins", ("plugins",)),
    ("CLI", ("cli", "__main__")),
    # the published package's module paths: thin re-exports of the layers below (README, "Migrating")
    (
        "compatibility aliases",
        (
            "canvas", "connectivity", "looped_block", "graft", "schema", "curriculum",
            "sharpening", "checkpoint", "action_heads", "cogvideox", "types",
        ),
    ),
]


def _module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the distribution."""
    out = {}
    roots = {ROOT: REPO / ROOT, **{name: REPO / folder for folder, name in MAPPED.items()}}
    for dotted, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([dotted, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names, lazy imports included, TYPE_CHECKING skipped)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # from pkg import submodule
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _layer(module: str) -> int | None:
    rest = module.removeprefix(ROOT + ".")
    head = rest.split(".")[0]
    for i, (_, prefixes) in enumerate(LAYERS):
        if head in prefixes:
            return i
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """``{module: modules of the distribution it imports}``."""
    files = _module_files()
    out = {}
    for name, path in files.items():
        targets = set()
        for imported in _imports(name, path):
            # resolve "pkg.mod.attr" to the longest known module prefix
            parts = imported.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        out[name] = targets
    return out


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = sorted(m for m in graph if m != ROOT and _layer(m) is None)
    assert not missing, f"modules outside every layer of tests/test_layering.py: {missing}"


def test_no_module_imports_the_package_root(graph: dict[str, set[str]]) -> None:
    offenders = sorted(m for m, targets in graph.items() if ROOT in targets and m != ROOT)
    assert not offenders, f"these import the package root (import the defining module instead): {offenders}"


def test_no_upward_imports(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        if module == ROOT:
            continue
        for target in targets:
            if target == ROOT or None in (_layer(target), _layer(module)):
                continue  # reported by the tests above
            if _layer(target) > _layer(module):
                upward.append(f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # a package's __init__ re-exporting its submodules is not a cycle of code
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t != ROOT)} for m, ts in graph.items() if m != ROOT}
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
