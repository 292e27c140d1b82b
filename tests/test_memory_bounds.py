"""Sizes are bounded by what the machine holds: a training step's memory is estimated on the meta
device before anything is built, and a recipe that would not fit is bad input naming what to shrink."""

from __future__ import annotations

import pytest

from difflab.jobs.memory import estimate_training_memory, free_memory
from difflab.recipe import load_recipe
from difflab.runtime.catalog import builtin_recipes
from tests.conftest import run_cli, tiny_args


def test_a_model_of_half_a_trillion_weights_is_refused_before_it_is_built(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "r",
                   *tiny_args("model.channels=[100000, 100000]")) == 2
    err = capsys.readouterr().err
    assert "one training step needs about" in err and "TiB" in err and "fewer model channels" in err
    assert "Traceback" not in err


def test_a_batch_too_large_for_this_machine_names_the_batch_and_the_image_size(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "r",
                   *tiny_args("dataset.image_size=1024", "train.batch_size=65536")) == 2
    err = capsys.readouterr().err
    assert "smaller train.batch_size (now 65536)" in err and "dataset.image_size (now 1024)" in err


@pytest.mark.parametrize("builtin", builtin_recipes(), ids=lambda r: r.name)
def test_every_built_in_recipe_fits_comfortably(builtin):
    recipe = load_recipe(builtin.path)
    estimate = estimate_training_memory(recipe)
    assert 0 < estimate.total < 4e9, estimate  # laptops run these: far below any machine's memory
    assert estimate.total < free_memory("cpu")
