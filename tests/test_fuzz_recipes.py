"""Hostile recipes, generated: every malformed file and `--set` is answered with exit 2 and one
message that names the key, never a traceback (issue 19).

Hypothesis draws values of every TOML type for every key the schema has, keeps those the schema
refuses, and runs `difflab recipe check` (files) or `difflab recipe show --set` (overrides) in this
process. The budget is fixed (FUZZ) and the example database off: the same draws on every run, and
nothing written into the working tree; DIFFLAB_FUZZ_EXAMPLES=N draws N fresh ones per test instead.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import tomllib
import types
import typing
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from difflab.recipe import SECTIONS, Recipe
from difflab.recipe.loading import MAX_DEPTH
from tests.conftest import run_cli

# DIFFLAB_FUZZ_EXAMPLES=2000 hunts longer, with fresh draws each time
LONGER = os.environ.get("DIFFLAB_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(LONGER or 60), deadline=None, database=None, derandomize=not LONGER,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])

# Every key a recipe has: ("", "seed") at the top level, ("train", "lr") in a section.
KEYS = [("", name) for name in Recipe.model_fields if name not in SECTIONS and name != "profiles"] + [
    (section, name) for section, model in SECTIONS.items() for name in model.model_fields]

SCALARS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),  # nan and inf included
    st.booleans(),
    st.text(max_size=30),
    st.text(max_size=3, alphabet="0123456789.-e+"),  # strings that look like numbers
    st.datetimes(min_value=datetime.datetime(1, 1, 2)),
    st.dates(),
    st.times(),
    st.sampled_from(["digits", "ddpm", "unet2d", "adam", "toy", "ddim", "min-snr", "bf16", "color", "cpu"]),
)
TOML_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=8), inner,
                                                                            max_size=3),
    max_leaves=8)


def refused(section: str, key: str, value) -> bool:
    """Whether the schema refuses a recipe with this one key set to `value`."""
    return refused_data({section: {key: value}} if section else {key: value})


def refused_data(data: dict) -> bool:
    try:
        Recipe.model_validate(data)
    except ValidationError:
        return True
    return False


def key_path(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


@contextlib.contextmanager
def captured():
    """What the command printed, stdout and stderr together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield out


def check(path: Path) -> tuple[int, str]:
    with captured() as out:
        code = run_cli("recipe", "check", path)
    return code, out.getvalue()


def show_with(*overrides: str) -> tuple[int, str]:
    with captured() as out:
        try:
            code = run_cli("recipe", "show", "from-scratch", *(arg for item in overrides for arg in ("--set", item)))
        except SystemExit as error:  # argparse's own answer (`--set -x=1` reads as a flag): usage, exit 2
            code = error.code
    return code, out.getvalue()


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "recipe.toml"


@FUZZ
@given(key=st.sampled_from(KEYS), value=TOML_VALUES)
def test_a_refused_value_in_a_file_is_exit_2_naming_its_key(recipe_path, key, value):
    section, name = key
    assume(refused(section, name, value))
    data = {section: {name: value}} if section else {name: value}
    text = tomlkit.dumps(data)
    assume(tomllib.loads(text) == data)  # what tomlkit cannot write as it was given is not the test's
    recipe_path.write_text(text)
    code, out = check(recipe_path)
    assert code == 2 and "Traceback" not in out, out
    assert f"{recipe_path}: " in out and key_path(section, name) in out, out


# `--set` values as a person types them: TOML literals (arrays of any depth), or any text at all
SET_VALUES = st.one_of(
    st.text(max_size=40),
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8).map(
        lambda value: tomlkit.item(value).as_string()))


@FUZZ
@given(key=st.sampled_from(KEYS), raw=SET_VALUES)
def test_a_set_value_is_applied_or_refused_naming_the_set(key, raw):
    section, name = key
    item = f"{key_path(section, name)}={raw}"
    code, out = show_with(item)
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:
        assert f"--set {key_path(section, name)}" in out or f"--set '{key_path(section, name)}" in out, out
        assert "recipes/from-scratch.toml" not in out, out  # blamed on the --set, not the recipe file


def plausible(section: str, key: str) -> st.SearchStrategy:
    """Values of the key's own type, near its limits: what reaches the checks across keys."""
    annotation = (SECTIONS[section] if section else Recipe).model_fields[key].annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(plausible_scalar(args[0]), max_size=4)
    if origin in (typing.Union, types.UnionType):  # float | None
        return plausible_scalar(args[0])
    return plausible_scalar(annotation)


def plausible_scalar(kind) -> st.SearchStrategy:
    if typing.get_origin(kind) is typing.Literal:
        return st.sampled_from(typing.get_args(kind))
    return {bool: st.booleans(), int: st.integers(min_value=-2, max_value=2000),
            float: st.floats(min_value=-1, max_value=1000, allow_nan=False), str: st.text(max_size=5)}[kind]


@FUZZ
@given(data=st.data(), keys=st.lists(st.sampled_from(KEYS), min_size=2, max_size=5, unique=True))
def test_a_refused_mix_of_values_names_a_key_it_set(recipe_path, data, keys):
    recipe: dict = {}
    for section, name in keys:
        value = data.draw(plausible(section, name), label=key_path(section, name))
        (recipe.setdefault(section, {}) if section else recipe)[name] = value
    assume(refused_data(recipe))
    recipe_path.write_text(tomlkit.dumps(recipe))
    code, out = check(recipe_path)
    assert code == 2 and "Traceback" not in out, out
    assert any(key_path(section, name) in out for section, name in keys), out


@FUZZ
@given(data=st.data(), keys=st.lists(st.sampled_from(KEYS), min_size=2, max_size=5, unique=True))
def test_every_problem_a_mix_of_sets_brings_is_blamed_on_a_set(data, keys):
    items = [f"{key_path(section, name)}={tomlkit.item(data.draw(plausible(section, name))).as_string()}"
             for section, name in keys]
    code, out = show_with(*items)
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:  # from-scratch is valid as it is: whatever is wrong, a --set made it so
        lines = out.removeprefix("error: ").splitlines()
        assert all(line.startswith("--set ") for line in lines), out


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_as_a_recipe_file_is_checked_or_refused_in_one_message(recipe_path, text):
    recipe_path.write_text(text, encoding="utf-8")
    code, out = check(recipe_path)
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:
        assert str(recipe_path) in out, out


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_recipe_file_are_checked_or_refused_in_one_message(recipe_path, data):
    recipe_path.write_bytes(data)
    code, out = check(recipe_path)
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:
        assert str(recipe_path) in out, out


IDENTIFIERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


@FUZZ
@given(section=st.sampled_from(["", *SECTIONS]), name=IDENTIFIERS, value=SCALARS)
def test_an_unknown_key_is_named_with_the_keys_allowed(recipe_path, section, name, value):
    model = SECTIONS.get(section, Recipe)
    assume(name not in model.model_fields and not (section == "" and name == "profiles"))
    recipe_path.write_text(tomlkit.dumps({section: {name: value}} if section else {name: value}))
    code, out = check(recipe_path)
    assert code == 2 and "Traceback" not in out, out
    assert f"{key_path(section, name)}: unknown key" in out and "allowed" in out, out


@FUZZ
@given(key=st.text(max_size=30), raw=st.text(max_size=30))
def test_any_set_key_is_applied_or_refused_in_one_message(key, raw):
    code, out = show_with(f"{key}={raw}")
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:
        assert "--set" in out and "recipes/from-scratch.toml" not in out, out


@FUZZ
@given(depth=st.integers(min_value=MAX_DEPTH + 1, max_value=400), key=st.sampled_from(KEYS))
def test_values_nested_deep_are_refused_in_one_line(recipe_path, depth, key):
    section, name = key
    value = "[" * depth + "]" * depth
    recipe_path.write_text(f"[{section}]\n{name} = {value}\n" if section else f"{name} = {value}\n")
    code, out = check(recipe_path)
    assert code == 2 and "Traceback" not in out and "nested more than" in out, out
    code, out = show_with(f"{key_path(section, name)}={value}")
    if (SECTIONS[section] if section else Recipe).model_fields[name].annotation is str:
        assert code == 0  # --set reads a value it cannot parse as TOML as a bare string, and a string it is
    else:
        assert code == 2 and "Traceback" not in out and f"--set {key_path(section, name)}" in out, out


@FUZZ
@given(name=st.text(max_size=10), changes=TOML_VALUES)
def test_any_profile_is_checked_when_the_recipe_is(recipe_path, name, changes):
    text = tomlkit.dumps({"profiles": {name: changes}})
    assume(tomllib.loads(text) == {"profiles": {name: changes}})
    recipe_path.write_text(text)
    code, out = check(recipe_path)
    assert code in (0, 2) and "Traceback" not in out, out
    if code == 2:
        assert f"{recipe_path}: profiles" in out, out

