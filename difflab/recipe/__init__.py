"""The recipe: a typed, validated config tree that round-trips to TOML (no torch here)."""

from difflab.recipe.schema import *  # noqa: F401,F403
