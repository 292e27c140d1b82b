"""Recipes in and out: read a TOML file, lay a profile and `--set` overrides over it,
validate it (every problem one line), and write the resolved recipe back.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError

from difflab.errors import RecipeError
from difflab.files import atomic_write_text
from difflab.recipe.messages import describe_error, shorten, show_value
from difflab.recipe.schema import Recipe


def parse_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a plain dict (as read from TOML) into a Recipe, or raise RecipeError."""
    problems = _problems(data)
    if problems:
        raise RecipeError(source, problems)
    return Recipe.model_validate(data)


def parse_with_overrides(data: dict[str, Any], overrides: list[str], source: str) -> Recipe:
    """`data` (a recipe as `source` says it) with `--set key.path=value` overrides laid over it, validated.

    A problem the overrides brought is blamed on the `--set` that brought it, not on `source`.
    """
    changed = _overridden(data, overrides, source)
    problems = _problems(changed)
    if not problems:
        return Recipe.model_validate(changed)
    own = set(_problems(data))
    raise OverrideError(source, [_blamed(problem, data, overrides, own) for problem in problems])


class OverrideError(RecipeError):
    """A recipe's problems, each where it came from: lines that start with `--set KEY=VALUE:` stand
    alone (the file did not say it), the others name the recipe file."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__(source, problems)
        self.args = ("\n".join(p if p.startswith("--set ") else f"{source}: {p}" for p in self.problems),)


def _blamed(problem: str, data: dict[str, Any], overrides: list[str], own: set[str]) -> str:
    """`problem` as the `--set` that caused it says it: the one that gave its key, else those that
    break a check across keys (without which it passes, else each alone, else all); a problem of
    the file's own is kept."""
    for item in reversed(overrides):
        key, _, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        parts = key.split(".")
        heads = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]  # seed.x=1 made `seed` a table
        if problem.startswith((f"{key}.", f"{key}[", *(f"{head}{sep}" for head in heads for sep in (" = ", ": ")))):
            said = f"{key} = {show_value(parse_toml_value(raw))}: "
            # `train.lr = nan: ...` says no more than `--set train.lr=nan: ...`; any other line is kept whole
            return f"--set {shorten(f'{key}={raw}')}: {problem.removeprefix(said)}"
    if problem in own or not overrides:
        return problem
    needed = [item for i, item in enumerate(overrides)
              if problem not in _problems(_overridden(data, [*overrides[:i], *overrides[i + 1:]], ""))]
    alone = [item for item in overrides if problem in _problems(_overridden(data, [item], ""))]
    return " ".join(f"--set {shorten(item.strip())}" for item in needed or alone or overrides) + f": {problem}"


def _overridden(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    apply_overrides(changed, overrides, source)
    return changed


def check_profiles(data: dict[str, Any], source: str) -> None:
    """Each profile laid over the recipe as written must validate: a typo in a profile not
    used today is still reported today."""
    if _problems(data):
        return  # the recipe's own problems are reported by parse_recipe
    problems = []
    for name in data.get("profiles", {}):
        problems += [f"profiles.{name}: {line}" for line in _problems(with_profile(data, name, source))]
    if problems:
        raise RecipeError(source, problems)


def _problems(data: dict[str, Any]) -> list[str]:
    try:
        Recipe.model_validate(data)
    except ValidationError as error:
        return [describe_error(e, data) for e in error.errors()]
    return []


def with_profile(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """The recipe dict with profile `name` laid over it.

    Its tables merge key by key, but its [expect] replaces the recipe's whole: a profile
    (a short smoke run, say) states everything it must reach.
    """
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or name not in profiles:
        known = ", ".join(profiles) if isinstance(profiles, dict) and profiles else "none"
        raise RecipeError(source, [f"--profile {name!r}: no [profiles.{name}] in this recipe (its profiles: "
                                   f"{known})"])
    changes = profiles[name]
    if not isinstance(changes, dict):
        raise RecipeError(source, [f"profiles.{name} = {show_value(changes)}: must be a table of recipe "
                                   f"sections, e.g. [profiles.{name}.train]"])
    if "profiles" in changes:
        raise RecipeError(source, [f"profiles.{name}.profiles: a profile cannot hold profiles"])
    return _merged(data, changes, replace=("expect",))


def _merged(base: dict[str, Any], changes: dict[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    """`changes` laid over `base`, tables merged key by key, except the tables named in `replace`."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in replace:
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path, overrides: list[str] = (), profile: str | None = None) -> Recipe:
    """Read and validate a recipe file; lay profile `profile` over it, then `key.path=value` overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(str(path), [f"cannot read: {error}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(str(path), [f"not valid TOML: {error}"]) from None
    except RecursionError:  # tomllib reads nested arrays recursively
        raise RecipeError(str(path), [_TOO_DEEP]) from None
    if _depth(data) > MAX_DEPTH:
        raise RecipeError(str(path), [_TOO_DEEP])
    check_profiles(data, str(path))
    if profile:
        data = with_profile(data, profile, str(path))
    return parse_with_overrides(data, overrides, str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> None:
    """Apply `--set key.path=value` strings in place; values are TOML values, bare words are strings.
    (parse_with_overrides applies and validates, blaming a bad value on its `--set`.)"""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(f"--set {shorten(repr(item))}: expected key.path=value, e.g. train.lr=2e-4")
            continue
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {shorten(repr(item))}: {part} is not a section")
                break
        else:
            node[parts[-1]] = parse_toml_value(raw.strip())
    if problems:
        raise OverrideError(source, problems)


def parse_toml_value(raw: str) -> Any:
    """Read one TOML value (`3`, `2e-4`, `true`, `[1, 2]`, `"x"`); anything else is a bare string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
    return value if _depth(value) <= MAX_DEPTH else raw  # too deep: refused as a string, by its key


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML: every default written out."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if not data.get("profiles"):
        data.pop("profiles", None)  # no profiles: no empty [profiles] table at the end of the file
    return tomlkit.dumps(data)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe atomically."""
    atomic_write_text(Path(path), recipe_to_toml(recipe))


# No recipe value nests deeper than a list of lists; 32 leaves room and keeps every reader (pydantic,
# tomlkit, the messages) far from Python's recursion limit, which ~500 levels reached.
MAX_DEPTH = 32
_TOO_DEEP = f"values nested more than {MAX_DEPTH} levels deep: a recipe's values are numbers, strings and lists"


def _depth(value: Any) -> int:
    """How deeply tables and arrays nest in a TOML value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in children)
    return deepest
