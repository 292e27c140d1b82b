"""One registry of every named choice: the schema, the sampling code, the CLI and the README agree with it."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import DDPMScheduler

from difflab.cli.main import build_parser
from difflab.diffusion.guidance import GUIDANCE
from difflab.diffusion.samplers import SCHEDULER_CLASSES, sampler_scheduler, schedule_sigma_max
from difflab.diffusion.schedules import noise_scheduler
from difflab.errors import InputError
from difflab.recipe import SAMPLERS, ScheduleConfig
from difflab.recipe.registry import (
    BETA_SCHEDULES,
    CHAPTERS,
    GUIDANCE_FUNCTIONS_BY_NAME,
    RECIPE_CHAPTERS,
    SAMPLERS_BY_NAME,
    SCHEDULE_KINDS,
    samplers_of_schedule,
)
from difflab.recipe.sigmas import training_sigma_max
from difflab.runtime.catalog import builtin_recipes

README = Path(__file__).resolve().parent.parent / "README.md"

# ---------------------------------------------------------------- sigma_max without diffusers

SETTINGS = [(100, 1e-4, 0.02), (1000, 1e-4, 0.02), (1000, 0.00085, 0.012), (500, 0.001, 0.004), (50, 1e-4, 0.05)]


@pytest.mark.parametrize("beta_schedule", list(BETA_SCHEDULES))
@pytest.mark.parametrize("timesteps,beta_start,beta_end", SETTINGS)
def test_the_pure_sigma_max_is_diffusers(beta_schedule, timesteps, beta_start, beta_end):
    scheduler = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                              beta_end=beta_end)
    real = schedule_sigma_max(scheduler)
    assert training_sigma_max(beta_schedule, timesteps, beta_start, beta_end) == pytest.approx(real, rel=1e-6)


def test_the_cosine_schedule_starts_far_beyond_edms_sigma_max():
    # its last beta, capped at 0.999, drops alpha_bar 1000x: the figure the README and the refusal quote
    assert round(training_sigma_max("squaredcos_cap_v2", 1000, 1e-4, 0.02)) == 20_291
    assert round(training_sigma_max("squaredcos_cap_v2", 4000, 1e-4, 0.02)) == round(
        schedule_sigma_max(DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2")))
    assert round(training_sigma_max("linear", 1000, 1e-4, 0.02)) == 157


CHECK_IN_A_FRESH_PYTHON = """
import json, sys
from difflab.errors import RecipeError
from difflab.recipe import parse_recipe
recipe = {"schedule": {"kind": "ddpm", "beta_schedule": "squaredcos_cap_v2"}, "model": {"kind": "unet2d"},
          "train": {"objective": "epsilon"}, "sample": {"sampler": "heun"}}
try:
    parse_recipe(recipe)
    message = None
except RecipeError as error:
    message = error.problems
print(json.dumps({"problems": message, "heavy": sorted(m for m in ("torch", "diffusers") if m in sys.modules)}))
"""


def test_the_recipe_refuses_heun_on_the_cosine_schedule_without_importing_torch():
    # the recipe check runs on the UI thread at every field edit: it must not load diffusers
    result = subprocess.run([sys.executable, "-c", CHECK_IN_A_FRESH_PYTHON], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["heavy"] == []
    with pytest.raises(InputError) as caught:  # the sampling code's refusal, from the real scheduler
        sampler_scheduler("heun", noise_scheduler(ScheduleConfig(kind="ddpm", beta_schedule="squaredcos_cap_v2")))
    refusal = str(caught.value).removeprefix("sampler 'heun' ")
    assert seen["problems"] == [f"sample.sampler = 'heun': {refusal}"]


# ---------------------------------------------------------------- the registry and its readers


def test_each_sampler_names_a_diffusers_class_whose_settings_fit_its_rules():
    for name, cls in SCHEDULER_CLASSES.items():
        rule = SAMPLERS_BY_NAME[name]
        assert cls.__name__ == rule.scheduler_class
        settings = inspect.signature(cls.__init__).parameters
        assert set(rule.options) <= set(settings), name
        # where the registry says the step clips, the class can; where the loop clips, it cannot
        assert ("clip_sample" in settings) == (rule.x0_clip == "step"), name
        assert ("thresholding" in settings) >= (rule.x0_clip == "thresholding"), name
    assert samplers_of_schedule("toy") == ("toy",) and SAMPLERS_BY_NAME["toy"].x0_clip == "none"


def test_the_guidance_functions_describe_themselves_as_the_registry_does():
    for name, function in GUIDANCE.items():
        assert function.description == GUIDANCE_FUNCTIONS_BY_NAME[name].help


def test_the_cli_names_every_sampler_with_its_schedule():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("sample", "eval"):
        sampler = next(a for a in commands[command]._actions if a.dest == "sampler")
        for kind in SCHEDULE_KINDS:
            assert f"{', '.join(samplers_of_schedule(kind))} ({kind} schedule)" in sampler.help


def readme_table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, each a list of cells without backticks."""
    text = README.read_text(encoding="utf-8")
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows


def test_the_readmes_sampler_table_is_the_registry():
    rows = readme_table("### Samplers")
    assert [row[0] for row in rows] == list(SAMPLERS)
    for name, schedules, scheduler_class, *_ in rows:
        rule = SAMPLERS_BY_NAME[name]
        assert schedules.split(", ") == list(rule.schedules), name
        assert scheduler_class == (rule.scheduler_class or "—"), name


def test_the_readmes_sample_section_row_lists_the_samplers_by_schedule():
    row = next(row for row in readme_table("## Recipes") if row[0] == "[sample]")
    listed = re.search(r"sampler \((\w+); with ddpm: ([^)]*)\)", row[2])
    assert listed is not None, row[2]
    assert (listed[1],) == samplers_of_schedule("toy")
    assert tuple(listed[2].split(", ")) == samplers_of_schedule("ddpm")


# ---------------------------------------------------------------- the book's chapters


def test_every_builtin_recipe_is_labelled_with_its_book_chapter():
    recipes = builtin_recipes()
    assert {r.name for r in recipes} == set(RECIPE_CHAPTERS), "every built-in recipe follows a chapter"
    for recipe in recipes:
        label = CHAPTERS[RECIPE_CHAPTERS[recipe.name]].label
        assert recipe.description.startswith(f"{label}: "), (recipe.name, recipe.description)


def test_the_readme_names_each_builtin_recipes_book_chapter():
    text = README.read_text(encoding="utf-8")
    named = dict(re.findall(r"^- \*\*`([\w-]+)`\*\* — chapter (\d+)", text, flags=re.MULTILINE))
    assert {name: int(n) for name, n in named.items()} == RECIPE_CHAPTERS
