"""The shape of the code: the layers contract holds; the engine never imports Textual; quick
commands never import torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import difflab

ROOT = Path(__file__).resolve().parent.parent


def engine_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(difflab.__path__, "difflab.")
            if not m.name.startswith(("difflab.__main__", "difflab.screens", "difflab.recipes"))]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_engine_never_imports_textual():
    modules = engine_modules()
    assert "difflab.jobs.training" in modules and "difflab.runtime.worker" in modules
    result = python(
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "assert not leaked, leaked\n")
    assert result.returncode == 0, result.stderr


def test_help_recipes_and_recipe_check_do_not_import_torch():
    result = python(
        "import sys, contextlib, io\n"
        "from difflab.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['recipes']) == 0\n"
        "    assert main(['recipe', 'check', 'from-scratch']) == 0\n"
        "    assert main(['recipe', 'show', 'from-scratch']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'torchvision', 'sklearn') if m in sys.modules)\n"
        "assert not heavy, heavy\n")
    assert result.returncode == 0, result.stderr


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter]: the layers, no torch below diffusion, no textual in the
    engine, screens only above jobs, and no cycle between packages or files."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert "5 kept, 0 broken" in result.stdout
