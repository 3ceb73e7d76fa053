"""The package's layers: lower ones never import upper ones, and the evaluations run without the engine."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "kdistill"
# Each layer may import the ones before it, never those after it.
LAYERS = [{"losses", "models", "data"}, {"methods"}, {"engine"}, {"eval", "report", "export"}, {"grid"}]


def imported_packages(folder: Path) -> set[str]:
    """The kdistill subpackages that the modules under `folder` import."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found |= {name.split(".")[1] for name in names if name.startswith("kdistill.")}
    return found


@pytest.mark.parametrize("level", range(len(LAYERS)))
def test_a_layer_imports_no_layer_above_it(level):
    above = set().union(*LAYERS[level + 1:])
    for package in LAYERS[level]:
        assert not imported_packages(PACKAGE / package) & above, package


def test_the_evaluations_reports_and_export_do_not_import_the_engine():
    code = ("import importlib, pkgutil, sys, kdistill.eval, kdistill.export, kdistill.report\n"
            "for package in (kdistill.eval, kdistill.export, kdistill.report):\n"
            "    for module in pkgutil.iter_modules(package.__path__):\n"
            "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
            "print(sorted(name for name in sys.modules if name.startswith('kdistill.engine')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_leaf_modules_import_only_the_errors():
    """Every layer writes files through `kdistill.files`, so it may import nothing above it."""
    for name in ("errors", "files"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert {module for module in imported if module.startswith("kdistill")} <= {"kdistill.errors"}, name
