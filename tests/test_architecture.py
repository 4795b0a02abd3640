"""The package is a strict stack of layers (pyproject.toml [tool.importlinter], checked by
import-linter): imports go down only, no package has an import circle, and trainlab modules
are imported at the top of a module, never inside a function to dodge a cycle."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "trainlab"
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]

pytest.importorskip("importlinter")


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, cwd=package_parent, env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"})


def test_the_layers_contract_holds():
    result = lint(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_build(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "trainlab", ignore=shutil.ignore_patterns("__pycache__"))
    trainer = tmp_path / "trainlab" / "engine" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\nfrom ..study import store  # an engine that reaches up into the store\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "trainlab.engine is not allowed to import trainlab.study" in result.stdout


def test_no_trainlab_import_inside_a_function():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("trainlab")):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"function-level imports of trainlab modules: {found}"
