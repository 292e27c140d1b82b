"""Validation messages for people: one line per problem, naming the key, the value and what is allowed.

pydantic's errors name a location and a reason; these turn each into
`train.lr = -0.1: input should be greater than 0 (learning rate)`, and an unknown key
into the keys that would be right (`did you mean 'lr'?`).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel

from difflab.recipe.schema import SECTIONS, Recipe


def describe_error(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for one pydantic error: key path, bad value, what is allowed."""
    loc = [str(p) for p in error["loc"]]
    key = _key_path(loc)
    if error["type"] == "extra_forbidden":
        return _unknown_key_line(loc)
    if not loc:  # a cross-field check that already names its keys
        return str(error["msg"]).removeprefix("Value error, ")
    message = str(error["msg"]).removeprefix("Value error, ")
    if re.match(r"^[\w.]+ = ", message) or message.startswith(f"{key}."):
        return message  # a section's own check already names its keys and values
    if len(loc) == 1 and loc[0] in SECTIONS and error["type"] in ("model_type", "dict_type"):
        return f"{key} = {show_value(_lookup(data, loc))}: must be a table (a [{key}] section)"
    value = _lookup(data, loc)
    allowed = _allowed(loc)
    line = f"{key} = {show_value(value)}: {message[0].lower()}{message[1:]}"
    return f"{line} ({allowed})" if allowed and error["type"] != "literal_error" else line


def _key_path(loc: list[str]) -> str:
    """('model', 'channels', '1') -> model.channels[1]"""
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")


def _unknown_key_line(loc: list[str]) -> str:
    key = ".".join(loc)
    model = Recipe if len(loc) == 1 else SECTIONS.get(loc[0])
    if model is None:
        return f"{key}: unknown key"
    allowed = list(model.model_fields)
    hint = difflib.get_close_matches(loc[-1], allowed, n=1)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    where = "at the top level" if len(loc) == 1 else f"in [{loc[0]}]"
    return f"{key}: unknown key; {did_you_mean}allowed {where}: {', '.join(allowed)}"


def _allowed(loc: list[str]) -> str:
    field = _field(loc)
    return f"{field.description}" if field is not None and field.description else ""


def _field(loc: list[str]):
    model: type[BaseModel] = Recipe
    field = None
    for part in loc:
        if model is None or part not in model.model_fields:
            return field if part.isdigit() else None
        field = model.model_fields[part]
        model = field.annotation if isinstance(field.annotation, type) and issubclass(
            field.annotation, BaseModel) else None
    return field


def _lookup(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


# A message names the value it refuses, but a 1 MB value must not make a 1 MB line.
SHOWN_CHARACTERS = 200


def show_value(value: Any) -> str:
    """A value as a recipe line writes it (strings quoted, booleans in TOML's lower case), shortened
    to its first SHOWN_CHARACTERS characters."""
    return shorten(repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool)
                   else str(value))


def shorten(text: str) -> str:
    """`text` cut to its first SHOWN_CHARACTERS characters, saying how long it was."""
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}… ({len(text):,} characters)"
