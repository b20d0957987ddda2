"""Imports go one way: ``pbridge`` (building blocks) <- ``pbridge.models`` (variants) <-
``pbridge.inference`` (training, sampling, evaluation, analysis) <- the command line
(docs/architecture.md); and no two modules import each other, directly or round a circle.

Read from the source with :mod:`ast`, so nothing is imported. An import inside a function runs
only when the function is called; in ``pbridge/`` only the modules listed in ``LAZY`` import an
upper layer so, and none at module level.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pbridge": ROOT / "pbridge", "pbridge.models": ROOT / "models"}
"""Package name -> its folder (``pyproject.toml`` maps ``pbridge.models`` to ``models/``)."""

FORBIDDEN = {
    "pbridge": ("pbridge.models", "pbridge.inference"),
    "pbridge.models": ("pbridge.inference",),
}
"""The packages each layer must not import at module level."""

LAZY = {
    "pbridge/cli/__init__.py": "the entry point: imports pbridge.inference.svi inside main",
    "pbridge/cli/parser.py": "train's --variant reads pbridge.models.builders.IMAGE_VARIANTS "
    "inside the function that adds it",
    "pbridge/cli/train.py": "imports pbridge.inference inside the checks and the train command",
    "pbridge/cli/run_commands.py": "imports pbridge.inference inside the checks and the commands",
}
"""The modules of ``pbridge/`` that import an upper layer, inside functions only, by design."""


def _modules(package: str) -> list[tuple[str, Path]]:
    """``(package of the module, path)`` of every module of ``package``, its subpackages'
    included (``pbridge/cli/run_commands.py`` is a module of ``pbridge.cli``)."""
    folder = PACKAGES[package]
    return [
        (".".join([package, *path.relative_to(folder).parent.parts]), path)
        for path in sorted(folder.rglob("*.py"))
    ]


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The absolute names an import statement of a module of ``package`` imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module or ""]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    stem = ".".join([*base, node.module] if node.module else base)
    return [stem] if node.module else [f"{stem}.{alias.name}" for alias in node.names]


def module_level_imports(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every import outside function bodies (classes and ``if`` blocks
    included) of a module of ``package``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend((child.lineno, name) for name in _imported(child, package))
            visit(child)

    visit(ast.parse(source))
    return found


def _forbidden(name: str, layer: str) -> bool:
    """Whether ``name`` is a module of a layer that ``layer`` (a top package) must not import."""
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])


def layer_violations(package: str, path: Path) -> list[str]:
    """``file:line imports name`` for every module-level import of a forbidden layer in the
    module ``path`` of ``package`` (a top package or one of its subpackages)."""
    layer = max((p for p in FORBIDDEN if package == p or package.startswith(p + ".")), key=len)
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in module_level_imports(path.read_text(), package)
        if _forbidden(name, layer)
    ]


def _all_imports(path: Path, package: str) -> list[str]:
    """Every name the module imports, inside functions included."""
    return _all_imports_of(path.read_text(), package)


def _all_imports_of(source: str, package: str) -> list[str]:
    return [
        imported
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for imported in _imported(node, package)
    ]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_level_import_of_an_upper_layer(package):
    modules = _modules(package)
    assert modules
    assert [bad for sub, path in modules for bad in layer_violations(sub, path)] == []


def test_only_the_lazy_exceptions_import_an_upper_layer_inside_functions():
    """Each module of ``LAZY`` imports an upper layer (inside functions only, by the test
    above); no other module of ``pbridge/`` does, anywhere."""
    for sub, path in _modules("pbridge"):
        name = path.relative_to(ROOT).as_posix()
        upper = [n for n in _all_imports(path, sub) if _forbidden(n, "pbridge")]
        assert bool(upper) == (name in LAZY), (name, upper)
    assert all((ROOT / name).is_file() for name in LAZY)


@pytest.mark.parametrize(
    "package, source",
    [
        ("pbridge", "from pbridge.models.vqvae import VQVAE\n"),
        ("pbridge", "import pbridge.inference.svi\n"),
        ("pbridge", "from .models import builders\n"),
        ("pbridge", "from . import inference\n"),
        ("pbridge", "if True:\n    from .inference.svi import train\n"),
        ("pbridge", "class A:\n    from .inference.svi import train\n"),
        ("pbridge.models", "from pbridge.inference.svi import train\n"),
        ("pbridge.models", "from ..inference import svi\n"),
    ],
)
def test_a_planted_module_level_import_is_found(package, source):
    names = [name for _, name in module_level_imports(source, package)]
    assert any(n.startswith(FORBIDDEN[package]) for n in names), names


def test_imports_inside_functions_are_allowed():
    source = "def f():\n    import pbridge.inference\n    from .models import vqvae\n"
    assert module_level_imports(source, "pbridge") == []


SOURCES = {**PACKAGES, "pbridge.inference": ROOT / "inference"}
"""Every package of the project and its folder."""


def _module_name(package: str, path: Path) -> str:
    """The dotted name of the module ``path`` of ``package`` (``__init__.py``: the package)."""
    parts = path.relative_to(SOURCES[package]).with_suffix("").parts
    return ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports by name, inside functions included; the
    designed lazy imports of :data:`LAZY` (upward, inside functions) left out."""
    paths = {_module_name(p, path): (p, path) for p in SOURCES for path in SOURCES[p].rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, (package, path) in paths.items():
        sub = _module_name(package, path.parent / "__init__.py")
        if path.name == "__init__.py":
            sub = name
        lazy = path.relative_to(ROOT).as_posix() in LAZY
        names = (
            [n for _, n in module_level_imports(path.read_text(), sub)]
            if lazy
            else _all_imports(path, sub)
        )
        graph[name] = {n for n in names if n in paths and n != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of ``graph``: each strongly connected component of more than one module
    (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def test_no_import_circle():
    graph = import_graph()
    assert "pbridge.inference.bound" in graph["pbridge.inference.distributed"]
    assert import_circles(graph) == []


def test_a_planted_import_circle_is_found():
    """The circle that was: ``distributed`` imported ``svi`` inside a function while ``svi``
    imported ``distributed``."""
    graph = import_graph()
    graph["pbridge.inference.distributed"].add("pbridge.inference.svi")
    assert ["pbridge.inference.distributed", "pbridge.inference.svi"] in import_circles(graph)
    planted = "def f():\n    from .svi import negative_elbo\n"
    assert "pbridge.inference.svi" in _all_imports_of(planted, "pbridge.inference")


MAX_FUNCTION_LINES = 80
"""The longest a function of pbridge/, models/ or inference/ may be, docstring included."""


def test_no_function_is_longer_than_a_screen():
    """Every function of the three packages has at most ``MAX_FUNCTION_LINES`` lines."""
    long = []
    for folder in (ROOT / "pbridge", ROOT / "models", ROOT / "inference"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []


@pytest.mark.processes
def test_importing_the_package_changes_no_matplotlib_backend():
    """A notebook's backend stays its own: every module that imports matplotlib, and the
    modules a user loads a run with, imported after choosing ``svg``."""
    plotting = sorted(
        _module_name(p, path)
        for p in SOURCES
        for path in SOURCES[p].rglob("*.py")
        if "matplotlib" in path.read_text()
    )
    assert "pbridge.inference.plots" in plotting
    modules = [*plotting, "pbridge.inference.load", "pbridge.inference.analysis"]
    code = (
        "import importlib, matplotlib; matplotlib.use('svg'); "
        f"[importlib.import_module(m) for m in {modules!r}]; print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_every_name_pbridge_exports_is_its_module_s_own():
    """``pbridge.<name>`` for every name of ``pbridge.__all__`` is the object its module
    defines (the front door imports each lazily, by the module's name)."""
    import importlib

    import pbridge

    for name in pbridge.__all__:
        module = importlib.import_module(pbridge._EXPORTS[name], "pbridge")
        assert getattr(pbridge, name) is getattr(module, name), name
    assert set(pbridge.__all__) <= set(dir(pbridge))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        pbridge.trian  # noqa: B018
