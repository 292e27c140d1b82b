"""train.compile and sample.compile: torch.compile (inductor, which works on this CPU) changes the
speed, never the numbers or the files. A compiled run resumes uncompiled and the other way round.
Each compile costs tens of seconds on 2 cores, so one test covers training and one sampling."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from difflab.diffusion.generate import SamplingSetup, generate
from difflab.diffusion.models import build_model
from difflab.recipe import load_recipe, parse_recipe, save_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import read_losses, run_cli, tiny_args
from tests.test_headless_run import stop_after

# inductor reorders float sums: losses agree to about 1e-6 here; the bound leaves room for other CPUs
LOSS_TOLERANCE = 1e-4


def with_compile(recipe, on: bool):
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"compile": on})})


def final_weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "step_000012" / "model.safetensors")


@pytest.mark.xdist_group("compile")
def test_a_compiled_run_resumes_uncompiled_and_back_with_the_same_losses_and_checkpoint_format(tmp_path):
    whole = tmp_path / "whole"
    assert run_cli("run", "from-scratch", "--out", whole, *tiny_args("train.sample_every=0")) == 0
    reference = load_recipe(whole / "recipe.toml")
    for first, then in ((True, False), (False, True)):
        parted = tmp_path / f"compiled-{first}-then-{then}"
        run = RunDir.create(parted, with_compile(reference, first))
        graphs = counters["stats"]["unique_graphs"]
        stop_after(run, with_compile(reference, first), 5)
        assert (counters["stats"]["unique_graphs"] > graphs) == first  # compiled exactly when asked
        save_recipe(with_compile(reference, then), parted / "recipe.toml")  # the resume reads this one
        assert run_cli("run", "--resume", parted) == 0
        assert read_losses(parted) == pytest.approx(read_losses(whole), rel=LOSS_TOLERANCE)
        a, b = final_weights(whole), final_weights(parted)
        assert a.keys() == b.keys()  # no "_orig_mod." prefix from the compiled wrapper
        assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)


@pytest.mark.xdist_group("compile")
def test_sample_compile_gives_the_same_images_as_the_plain_model():
    recipe = parse_recipe({"dataset": {"image_size": 8}, "model": {"channels": [8, 16, 16], "kernel_size": 3},
                           "sample": {"steps": 3}})
    torch.manual_seed(0)
    model = build_model(recipe)
    setup = SamplingSetup(model, recipe, (1, 8, 8), (0.0, 1.0), "cpu")
    plain = generate(setup, 4, 3)
    compiled_recipe = recipe.model_copy(update={"sample": recipe.sample.model_copy(update={"compile": True})})
    graphs = counters["stats"]["unique_graphs"]
    compiled = generate(SamplingSetup(model, compiled_recipe, (1, 8, 8), (0.0, 1.0), "cpu"), 4, 3)
    assert counters["stats"]["unique_graphs"] > graphs
    assert torch.allclose(plain, compiled, atol=1e-5)
    assert not torch.equal(plain, torch.zeros_like(plain))
