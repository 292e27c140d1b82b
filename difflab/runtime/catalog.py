"""Built-in recipes: the TOML files shipped in the difflab.recipes package.

They are package data, so they are found the same way after an editable or a
normal install (importlib.resources, not a path relative to the source tree).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from difflab.errors import InputError


@dataclass(frozen=True)
class BuiltinRecipe:
    """A built-in recipe's name (file stem), one-line description and file."""

    name: str
    description: str
    path: Path


def builtin_recipes() -> list[BuiltinRecipe]:
    """Every built-in recipe, sorted by name."""
    found = []
    for entry in files("difflab.recipes").iterdir():
        if entry.name.endswith(".toml"):
            with as_file(entry) as path:
                description = tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
                found.append(BuiltinRecipe(entry.name.removesuffix(".toml"), description, Path(path)))
    return sorted(found, key=lambda r: r.name)


def find_recipe(name_or_path: str) -> Path:
    """A recipe file: an existing path, else a built-in by name (with or without .toml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    for recipe in builtin_recipes():
        if recipe.name == name and str(path.parent) == ".":
            return recipe.path
    names = ", ".join(r.name for r in builtin_recipes())
    raise InputError(f"{name_or_path}: no such recipe file, and no built-in recipe of that name "
                     f"(built-ins: {names})")


def is_builtin(path: Path) -> bool:
    """Whether `path` is one of the built-in recipe files."""
    return any(r.path.resolve() == Path(path).resolve() for r in builtin_recipes())
