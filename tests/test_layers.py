"""Imports go one way: ``pbridge`` (building blocks) <- ``pbridge.models`` (variants) <-
``pbridge.inference`` (training, sampling, evaluation, analysis) <- the command line
(docs/architecture.md).

Read from the source with :mod:`ast`, so nothing is imported. An import inside a function runs
only when the function is called; in ``pbridge/`` only the modules listed in ``LAZY`` import an
upper layer so, and none at module level.
"""

from __future__ import annotations

import ast
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
    "pbridge/cli/draw.py": "imports pbridge.inference inside the checks and the commands",
    "pbridge/__init__.py": "re-exports pbridge.inference.analysis.to_inferencedata through a "
    "module __getattr__",
}
"""The modules of ``pbridge/`` that import an upper layer, inside functions only, by design."""


def _modules(package: str) -> list[tuple[str, Path]]:
    """``(package of the module, path)`` of every module of ``package``, its subpackages'
    included (``pbridge/cli/draw.py`` is a module of ``pbridge.cli``)."""
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
    return [
        imported
        for node in ast.walk(ast.parse(path.read_text()))
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
