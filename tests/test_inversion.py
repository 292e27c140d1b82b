"""DDIM inversion: images back to noise and forward again, on a small class-conditional digits model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from difflab.diffusion.data import load_dataset
from difflab.diffusion.inversion import (
    Edit,
    InversionSettings,
    dataset_images,
    edit,
    invert_and_reconstruct,
    random_noise_error,
)
from difflab.diffusion.loading import run_setup
from difflab.errors import RecipeError
from difflab.recipe import parse_recipe
from tests.conftest import run_cli

# Every test here reads ddim-inversion's smoke run (8 px class-conditional digits, ~320 steps,
# made once per session): under pytest-xdist they share its worker.
pytestmark = pytest.mark.xdist_group("inversion_smoke_run")


@pytest.fixture(scope="module")
def digits_run(inversion_smoke_run, tmp_path_factory):
    """A copy of the smoke run, so that `difflab invert` here writes beside its own copy only."""
    run = tmp_path_factory.mktemp("inversion-copy") / "run"
    shutil.copytree(inversion_smoke_run, run)
    return run


@pytest.fixture(scope="module")
def setup_and_images(digits_run):
    setup = run_setup(digits_run, [], "cpu")
    images, labels = dataset_images(load_dataset(setup.recipe.dataset), list(range(8)), "images")
    return setup, images, labels


def test_reconstruction_error_falls_with_steps_and_is_far_below_random_noise(setup_and_images):
    setup, images, labels = setup_and_images
    mse = {n: invert_and_reconstruct(setup, images, labels, InversionSettings(n)).error.mean_mse for n in (10, 20, 50)}
    assert mse[10] > mse[20] and mse[50] < mse[20] * 1.15, mse  # 50 may level off: allow a little noise
    noise = random_noise_error(setup, images, labels, InversionSettings(20)).mean_mse
    assert mse[20] * 20 < noise, (mse, noise)


def test_start_step_zero_gives_back_the_original_exactly(setup_and_images):
    setup, images, labels = setup_and_images
    same = edit(setup, images, labels, InversionSettings(20, start_step=0), Edit(class_label=3, guidance_scale=5))
    assert torch.equal(same, images)
    changed = edit(setup, images, labels, InversionSettings(20, start_step=15), Edit(class_label=3))
    assert not torch.allclose(changed, images, atol=0.05)


def test_guidance_makes_inversion_worse(setup_and_images):
    setup, images, labels = setup_and_images
    # at 50 steps the step error is small enough for guidance's own error to show (at 20 they tie)
    error = {g: invert_and_reconstruct(setup, images, labels, InversionSettings(50, None, g)).error.mean_mse
             for g in (1.0, 3.0)}
    assert error[1.0] * 1.5 < error[3.0], error


def test_invert_command_writes_grids_and_the_error_table(digits_run, tmp_path, capsys):
    from PIL import Image

    picture = tmp_path / "my-digit.png"
    Image.new("L", (32, 32), 0).save(picture)
    assert run_cli("invert", digits_run, "--steps", "10", "--sweep-steps", "5,10", "--image", "0", "--image", "1",
                   "--image-path", picture, "--edit-class", "4", "--start-step", "5", "--device", "cpu") == 0
    folder = digits_run / "inversion"
    for name in ("originals", "inverted-noise", "reconstructions", "edits", "inversion"):
        assert (folder / f"{name}.png").is_file()
    table = json.loads((folder / "errors.json").read_text())
    assert table["images"] == 3 and [row["steps"] for row in table["sweep_steps"]] == [5, 10]
    assert table["edit"] == {"start_step": 5, "class_label": 4, "guidance_scale": None, "loss_guidance": False}
    assert "DDIM inversion of 3 images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["--image-path", "nowhere.png"], "nowhere.png: [Errno 2] No such file"),
    (["--image", "9999"], "invert.images = [9999]: [9999] outside 0..511"),
    (["--start-step", "30", "--steps", "20"], "invert.start_step = 30: at most invert.steps = 20"),
    (["--sweep-steps", "ten"], "--sweep-steps ten: expected positive step counts"),
])
def test_invert_command_names_bad_input(digits_run, capsys, argv, fragment, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert run_cli("invert", digits_run, *argv, "--device", "cpu") == 2
    assert fragment in capsys.readouterr().err


def test_a_corrupt_image_file_is_named(digits_run, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert run_cli("invert", digits_run, "--image-path", broken, "--device", "cpu") == 2
    assert f"cannot read image {broken}" in capsys.readouterr().err


def test_run_with_invert_source_inverts_without_training(digits_run, recipe_file, tmp_path):
    recipe = recipe_file(f'[invert]\nenabled = true\nsource = "{digits_run}"\nimages = [0, 1]\nsteps = 10\n'
                         f'[expect]\nreconstruction_psnr_above = 20.0\n')
    out = tmp_path / "inverted"
    assert run_cli("run", recipe, "--out", out, "--device", "cpu") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job"] == "invert" and summary["expectations"][0]["passed"]
    assert (out / "inversion" / "reconstructions.png").is_file() and not (out / "model").exists()


@pytest.mark.parametrize("data, fragment", [
    ({"invert": {"enabled": True}}, "invert.enabled = true: DDIM inversion runs a noise schedule backwards"),
    ({"invert": {"steps": 10, "start_step": 11}}, "invert.start_step = 11: at most invert.steps = 10"),
    ({"invert": {"stesp": 10}}, "invert.stesp: unknown key; did you mean 'steps'?"),
    ({"expect": {"reconstruction_psnr_above": 20.0}}, "expect.reconstruction_psnr_above: needs the DDIM inversion"),
    ({"invert": {"guidance_scale": 3.0}}, "need a class-conditional model"),
])
def test_bad_invert_sections_are_named(data, fragment):
    with pytest.raises(RecipeError) as error:
        parse_recipe(data, "r.toml")
    assert fragment in str(error.value)
