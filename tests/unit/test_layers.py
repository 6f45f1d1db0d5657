"""Config once: nothing below the edge imports ``caa``.

``caa/`` is the edge (settings, the AWS client factory, the wiring, the command line, the
API, the report, the Lambda and KCL entry points). Code under ``models/``, ``producers/``,
``consumers/`` and ``deploy/`` takes plain values or small frozen config objects, so it
never imports ``caa`` (``caa.settings``, ``caa.aws``, ``caa.wiring``, ...): not at the top
of a module, not inside a function, not under ``TYPE_CHECKING``, not by ``importlib``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BELOW_THE_EDGE = ("models", "producers", "consumers", "deploy")
EDGE = "caa"


def imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``, wherever it stands, and of every
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:  # relative imports stay in their package
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                yield node.lineno, arg.value


def edge_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    return [(line, module) for line, module in imported(ast.parse(source, filename))
            if module == EDGE or module.startswith(EDGE + ".")]


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", BELOW_THE_EDGE)
def test_nothing_below_the_edge_imports_caa(package: str) -> None:
    files = modules(package)
    assert files, f"no modules found under {package}/"
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in files
                 for line, module in edge_imports(path.read_text(), str(path))]
    assert not offenders, ("below the edge, take plain values or a config object (built in "
                           "caa/wiring.py) instead:\n" + "\n".join(offenders))


@pytest.mark.parametrize("source", [
    "from caa.settings import Settings",
    "import caa.aws",
    "from caa import wiring",
    "import caa",
    "def f():\n    from caa.aws import Aws\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from caa.settings import Settings\n",
    "import importlib\nimportlib.import_module('caa.settings')",
    "__import__('caa.aws')",
])
def test_the_check_sees_every_way_of_importing_the_edge(source: str) -> None:
    assert edge_imports(source)


@pytest.mark.parametrize("source", [
    "from caaa import x",
    "import cache",
    "from . import caa",
    "from .caa import settings",
    "x = 'caa.settings'",
])
def test_the_check_ignores_what_is_not_the_edge(source: str) -> None:
    assert edge_imports(source) == []
