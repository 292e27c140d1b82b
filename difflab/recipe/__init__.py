"""The recipe: a typed, validated config tree that round-trips to TOML (no torch here).

registry: every named choice and its rules; sections and schema: the typed tree;
sigmas: the training schedule's sigma_max in plain Python; messages: one line per
problem; loading: files, profiles, overrides and saving.
"""

from difflab.recipe.loading import (
    apply_overrides,
    check_profiles,
    load_recipe,
    parse_recipe,
    parse_toml_value,
    recipe_to_toml,
    save_recipe,
    with_profile,
)
from difflab.recipe.messages import describe_error
from difflab.recipe.registry import (
    BETA_SCHEDULES,
    CHAPTERS,
    DEVICES,
    DIFFUSERS_SAMPLERS,
    GUIDANCE_FUNCTIONS,
    GUIDANCE_FUNCTIONS_BY_NAME,
    MODEL_KINDS,
    OBJECTIVES,
    RECIPE_CHAPTERS,
    SAMPLERS,
    SAMPLERS_BY_NAME,
    SAMPLERS_NEEDING_LOW_SIGMA_MAX,
    SCHEDULE_KINDS,
    SOURCE_CLASSES,
    SOURCES,
    VALUE_RANGES,
    samplers_of_schedule,
    schedule_refusal,
)
from difflab.recipe.schema import SECTIONS, Recipe
from difflab.recipe.sections import (
    DOWN_BLOCKS,
    UP_BLOCKS,
    AudioConfig,
    DatasetConfig,
    EvalConfig,
    ExpectConfig,
    GuidanceConfig,
    InvertConfig,
    ModelConfig,
    SampleConfig,
    ScheduleConfig,
    Section,
    TrainConfig,
)
from difflab.recipe.sigmas import training_sigma_max

__all__ = [
    "BETA_SCHEDULES", "CHAPTERS", "DEVICES", "DIFFUSERS_SAMPLERS", "DOWN_BLOCKS", "GUIDANCE_FUNCTIONS",
    "GUIDANCE_FUNCTIONS_BY_NAME", "MODEL_KINDS", "OBJECTIVES", "RECIPE_CHAPTERS", "SAMPLERS", "SAMPLERS_BY_NAME",
    "SAMPLERS_NEEDING_LOW_SIGMA_MAX", "SCHEDULE_KINDS", "SECTIONS", "SOURCE_CLASSES", "SOURCES", "UP_BLOCKS",
    "VALUE_RANGES",
    "AudioConfig", "DatasetConfig", "EvalConfig", "ExpectConfig", "GuidanceConfig", "InvertConfig", "ModelConfig",
    "Recipe", "SampleConfig", "ScheduleConfig", "Section", "TrainConfig",
    "apply_overrides", "check_profiles", "describe_error", "load_recipe", "parse_recipe", "parse_toml_value",
    "recipe_to_toml", "samplers_of_schedule", "save_recipe", "schedule_refusal", "training_sigma_max",
    "with_profile",
]
