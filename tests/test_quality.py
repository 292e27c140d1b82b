"""Sample quality offline: the reference classifier, the metric, `difflab eval`, expectations, profiles."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from difflab.diffusion.data import load_dataset
from difflab.diffusion.loading import setup_for
from difflab.diffusion.models import build_model
from difflab.diffusion.quality import class_accuracy, evaluate_images
from difflab.diffusion.reference import reference_classifier
from difflab.errors import RecipeError
from difflab.jobs.evaluation import measure_model
from difflab.recipe import Recipe, load_recipe
from difflab.runtime.catalog import builtin_recipes
from tests.conftest import TINY_DDPM, run_cli, tiny_args

DIGITS_16 = Recipe.model_validate({"dataset": {"image_size": 16}, "device": "cpu"})


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS_16.dataset)


@pytest.fixture(scope="module")
def reference(digits):
    return reference_classifier(digits)


def test_the_classifier_is_trained_once_then_read_from_the_cache(digits, reference, classifier_cache):
    assert reference.held_out_accuracy > 0.85
    assert reference.path.parent.parent == classifier_cache
    assert (reference.path / "model.safetensors").is_file()
    again = reference_classifier(digits)
    assert again.built_in_s is None and again.held_out_accuracy == reference.held_out_accuracy


def test_the_metric_ranks_real_below_blurred_below_noise(reference):
    # real: held-out images the baseline did not use (it takes the first 128)
    real = reference.split.held_out[128:256]
    scores = {name: evaluate_images(reference, images).frechet_normalised for name, images in [
        ("real", real), ("blurred", gaussian_blur(real, 5, 1.2)), ("noise", torch.rand_like(real))]}
    assert scores["real"] < scores["blurred"] < scores["noise"], scores
    assert abs(scores["real"]) < 0.05 and abs(scores["noise"] - 1) < 0.1


def test_class_accuracy_compares_predicted_with_requested_classes(reference):
    images, labels = reference.split.held_out, reference.split.held_out_labels
    assert class_accuracy(reference, images, labels) == pytest.approx(reference.held_out_accuracy)
    assert class_accuracy(reference, images, (labels + 1) % 10) < 0.2
    report = evaluate_images(reference, images[:128], requested=labels[:128])
    assert report.class_accuracy > 0.85 and report.class_entropy_bits > 3.0


def test_a_briefly_trained_model_beats_an_untrained_one(tmp_path, capsys, recipe_file):
    run = tmp_path / "run"
    args = ["dataset.image_size=16", "train.batch_size=32", "train.max_steps=60", "train.log_every=5",
            "train.sample_every=0", "sample.steps=10", "sample.gif=false", "eval.num_samples=128",
            "expect.loss_drop_factor_above=1.5", "device='cpu'"]
    assert run_cli("run", recipe_file(""), "--out", run, *tiny_args(base=args)) == 0
    trained = json.loads((run / "summary.json").read_text())
    out = capsys.readouterr().out
    assert "sample quality" in out and "pass  expect.loss_drop_factor_above = 1.5" in out
    assert trained["eval"]["samples"] == 128 and trained["expectations"][0]["passed"]
    recipe = load_recipe(run / "recipe.toml")
    torch.manual_seed(recipe.seed)
    untrained = measure_model(setup_for(build_model(recipe), recipe, "cpu"), load_dataset(recipe.dataset),
                              128, lambda _: None)
    assert trained["eval"]["frechet_normalised"] < untrained["eval"]["frechet_normalised"]


# ------------------------------------------------------------------ expectations


@pytest.mark.parametrize("line,code,shown", [
    ("expect.final_loss_below=10.0", 0, "pass  expect.final_loss_below = 10:"),
    ("expect.loss_drop_factor_above=1000.0", 1, "FAIL  expect.loss_drop_factor_above = 1000:"),
])
def test_expectations_pass_and_fail_as_written(tmp_path, capsys, recipe_file, line, code, shown):
    assert run_cli("run", recipe_file(""), "--out", tmp_path / "run", *tiny_args(line, "expect.enabled=true")) == code
    assert shown in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["expectations"][0]["passed"] is (code == 0)


def test_an_expectation_that_needs_evaluation_with_evaluation_off_is_bad_input(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "run", *tiny_args("expect.enabled=true")) == 2
    assert "expect.frechet_normalised_below: needs the end-of-run evaluation" in capsys.readouterr().err


# Recipes whose smoke profile fine-tunes class-conditional-digits' smoke run (train.init_from).
FINE_TUNES = {"finetune", "finetune-pretrained", "lora-finetune"}
# Smoke replays that other tests read too: made once by a session fixture (tests/conftest.py).
SHARED_RUNS = {"class-conditional-digits": "conditional_smoke_run", "ddim-inversion": "inversion_smoke_run"}


def _grouped(builtin):
    """A built-in recipe as a test parameter, in the xdist group of the shared run it uses."""
    shared = SHARED_RUNS.get(builtin.name) or ("conditional_smoke_run" if builtin.name in FINE_TUNES else None)
    marks = [pytest.mark.xdist_group(shared)] if shared else []
    return pytest.param(builtin, marks=marks, id=builtin.name)


@pytest.mark.parametrize("builtin", [_grouped(b) for b in builtin_recipes()])
def test_every_builtin_recipe_smoke_profile_meets_its_expectations(builtin, tmp_path, request):
    run = tmp_path / "run"
    if builtin.name in SHARED_RUNS:
        run = request.getfixturevalue(SHARED_RUNS[builtin.name])  # the same replay, run once
    else:
        source = (["--set", f"train.init_from='{request.getfixturevalue('conditional_smoke_run')}'"]
                  if builtin.name in FINE_TUNES else [])
        assert run_cli("run", builtin.name, "--profile", "smoke", "--out", run, "--device", "cpu", *source) == 0
    summary = json.loads((run / "summary.json").read_text())
    checked = {e["name"] for e in summary["expectations"] if e["passed"]}
    # each smoke profile checks that the model learned and that its samples (or its guidance, its
    # DDIM reconstructions, or a VAE's reconstructions) work
    assert "loss_drop_factor_above" in checked
    assert checked & {"frechet_normalised_below", "guidance_loss_ratio_below", "reconstruction_psnr_above",
                      "vae_psnr_above"}
    assert all(e["passed"] for e in summary["expectations"])
    if builtin.name in FINE_TUNES:
        assert summary["init_from"] == str(request.getfixturevalue("conditional_smoke_run"))


@pytest.mark.xdist_group("conditional_smoke_run")
def test_a_conditional_run_measures_how_often_samples_show_the_class_asked_for(conditional_smoke_run):
    summary = json.loads((conditional_smoke_run / "summary.json").read_text())
    assert summary["eval"]["class_accuracy"] > 0.2  # chance is 0.1 for ten digits
    assert any(e["name"] == "class_accuracy_above" and e["passed"] for e in summary["expectations"])


def test_class_accuracy_counts_only_classes_the_classifier_knows(reference):
    images, labels = reference.split.held_out[:40], reference.split.held_out_labels[:40]
    asked = labels.clone()
    asked[:10] = 12  # a model with more class embeddings than the data has classes
    report = evaluate_images(reference, images, requested=asked)
    assert report.class_accuracy == pytest.approx(class_accuracy(reference, images[10:], labels[10:]))
    assert any("10 samples were asked for classes the dataset does not have" in w for w in report.warnings)


# ------------------------------------------------------------------ difflab eval


def test_eval_sweeps_step_counts_and_keeps_the_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args(base=TINY_DDPM)) == 0
    before = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", run, "--sampler", "ddim", "--sweep-steps", "2,4", "--samples", "16") == 0
    out = capsys.readouterr().out
    assert "ddim: quality per step count" in out and "16 samples per row" in out
    assert "only 16 samples: the Fréchet distance is unstable" in out
    if importlib.util.find_spec("torch_fidelity") is None:
        assert "Inception FID skipped: torch-fidelity not installed" in out
    summary = json.loads((run / "summary.json").read_text())
    assert [row["steps"] for row in summary["eval_sweep"]["ddim"]] == [2, 4]
    assert summary["final_loss"] == before["final_loss"] and summary["status"] == "finished"
    assert run_cli("eval", run, "--sampler", "ddpm", "--sweep-steps", "3", "--samples", "16") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["eval_sweep"]) == {"ddim", "ddpm"}


@pytest.mark.parametrize("argv,fragment", [
    (["--sweep-steps", "10,x"], "--sweep-steps 10,x: expected positive step counts"),
    (["--sweep-steps", "5000"], "sample.steps=5000: must be between 1 and"),
    (["--samples", "1"], "--samples 1: must be at least 2"),
])
def test_eval_rejects_bad_settings(tmp_path, capsys, argv, fragment):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args(base=TINY_DDPM, *["train.epochs=1"])) == 0
    capsys.readouterr()
    assert run_cli("eval", run, *argv) == 2
    assert fragment in capsys.readouterr().err


# ------------------------------------------------------------------ profiles


def test_a_profile_lays_its_tables_over_the_recipe(recipe_file):
    path = recipe_file('[train]\nlr = 2e-4\nepochs = 7\n[expect]\nfinal_loss_below = 0.01\n'
                       '[profiles.quick.train]\nepochs = 1\n[profiles.quick.expect]\nloss_drop_factor_above = 2.0\n')
    plain, quick = load_recipe(path), load_recipe(path, profile="quick")
    assert (plain.train.epochs, quick.train.epochs, quick.train.lr) == (7, 1, 2e-4)
    # a profile's [expect] replaces the recipe's: it says everything the short run must reach
    assert quick.expect.final_loss_below is None and quick.expect.loss_drop_factor_above == 2.0
    assert load_recipe(path, ["train.epochs=3"], profile="quick").train.epochs == 3  # --set wins


@pytest.mark.parametrize("text,profile,fragment", [
    ('[profiles.smoke.train]\nlrr = 1', None, "profiles.smoke: train.lrr: unknown key; did you mean 'lr'?"),
    ('[profiles.smoke.train]\nlr = -1', None, "profiles.smoke: train.lr = -1: input should be greater than 0"),
    ('[train]\nlr = 1e-3\n', "smoke", "--profile 'smoke': no [profiles.smoke] in this recipe"),
    ('[expect]\nconfidence_above = 1.5\n', None, "expect.confidence_above = 1.5: input should be less than 1"),
])
def test_bad_profiles_and_expectations_are_named(recipe_file, text, profile, fragment):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(text), profile=profile)
    assert fragment in str(caught.value)
