"""The recipe: a typed, validated config tree that round-trips to TOML (no torch here).

registry: every named choice and its rules; sections and schema: the typed tree;
sigmas: the training schedule's sigma_max in plain Python; messages: one line per
problem; loading: files, profiles, overrides and saving.
"""

import importlib
from typing import Any

# The public names and the module each lives in. They load on first use (PEP 562), so a
# caller of the registry alone (`difflab --help`'s choices) does not pay for pydantic.
_MODULES: dict[str, tuple[str, ...]] = {
    "registry": (
        "BETA_SCHEDULES", "CHAPTERS", "DEVICES", "DIFFUSERS_SAMPLERS", "GUIDANCE_FUNCTIONS",
        "GUIDANCE_FUNCTIONS_BY_NAME", "MODEL_KINDS", "OBJECTIVES", "RECIPE_CHAPTERS", "SAMPLERS",
        "SAMPLERS_BY_NAME", "SAMPLERS_NEEDING_LOW_SIGMA_MAX", "SCHEDULE_KINDS", "SOURCES", "SOURCE_CLASSES",
        "VALUE_RANGES", "samplers_of_schedule", "schedule_refusal"
    ),
    "sigmas": (
        "training_sigma_max",
    ),
    "sections": (
        "AudioConfig", "DOWN_BLOCKS", "DatasetConfig", "EvalConfig", "ExpectConfig", "GuidanceConfig",
        "InvertConfig", "LatentConfig", "ModelConfig", "SampleConfig", "ScheduleConfig", "Section", "TrainConfig", "UP_BLOCKS"
    ),
    "schema": (
        "Recipe", "SECTIONS"
    ),
    "messages": (
        "describe_error",
    ),
    "loading": (
        "apply_overrides", "check_profiles", "load_recipe", "parse_recipe", "parse_toml_value", "parse_with_overrides",
        "recipe_to_toml", "save_recipe", "with_profile"
    ),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'difflab.recipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"difflab.recipe.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])

