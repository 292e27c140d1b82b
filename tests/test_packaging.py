"""A normal (non-editable) install ships the engine, the screens and the built-in recipes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_recipes_and_screens_inside_difflab(tmp_path):
    source = tmp_path / "src"
    for name in ("difflab", "screens", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"],
        cwd=source, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = source / "dist" / build.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "difflab/recipes/from-scratch.toml" in names and "difflab/screens/__init__.py" in names
    assert not [n for n in names if n.startswith(("screens/", "recipes/", "tests/"))]

    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # a wheel is a zip laid out as site-packages
        archive.extractall(target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-c", "import difflab.runtime.catalog as c; print(c.__file__); "
                               "print([r.name for r in c.builtin_recipes()])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert str(target) in listed.stdout and "'from-scratch'" in listed.stdout
