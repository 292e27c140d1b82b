"""Recipes: valid, invalid (each problem one clear line), round trip, overrides, commands."""

from __future__ import annotations

import pytest

from difflab.errors import RecipeError
from difflab.recipe import Recipe, load_recipe, parse_recipe, recipe_to_toml, save_recipe
from difflab.runtime.catalog import builtin_recipes
from tests.conftest import run_cli


def test_an_empty_file_is_a_valid_recipe(recipe_file):
    recipe = load_recipe(recipe_file(""))
    assert recipe == Recipe()
    assert recipe.dataset.source == "digits" and recipe.dataset.image_size == 28
    assert recipe.model.channels == [32, 64, 64] and recipe.train.lr == 1e-3


def test_saving_a_loaded_recipe_gives_the_same_recipe_back(tmp_path, recipe_file):
    original = load_recipe(recipe_file('[train]\nlr = 2e-4\nepochs = 7\n[model]\nchannels = [16, 32]\n'))
    save_recipe(original, tmp_path / "saved.toml")
    again = load_recipe(tmp_path / "saved.toml")
    assert again == original
    assert recipe_to_toml(again) == (tmp_path / "saved.toml").read_text()


@pytest.mark.parametrize("builtin", builtin_recipes(), ids=lambda r: r.name)
def test_builtin_recipes_validate_and_round_trip(builtin, tmp_path):
    recipe = load_recipe(builtin.path)
    assert builtin.description, "every built-in recipe has a one-line description"
    save_recipe(recipe, tmp_path / "x.toml")
    assert load_recipe(tmp_path / "x.toml") == recipe


BAD_RECIPES = [
    ('[train]\nlrr = 1e-3', ["train.lrr", "unknown key", "did you mean 'lr'", "batch_size"]),
    ('[trian]\nlr = 1e-3', ["trian", "unknown key", "train"]),
    ('sed = 3', ["sed", "unknown key", "seed"]),
    ('[train]\nepochs = "3"', ["train.epochs = '3'", "valid integer"]),
    ('[train]\nlr = "fast"', ["train.lr = 'fast'", "valid number"]),
    ('[train]\nlr = -0.1', ["train.lr = -0.1", "greater than 0"]),
    ('[train]\nlr = 0', ["train.lr = 0", "greater than 0"]),
    ('[train]\nbatch_size = 0', ["train.batch_size = 0", "greater than 0"]),
    ('[train]\nbatch_size = -8', ["train.batch_size = -8", "greater than 0"]),
    ('[dataset]\nimage_size = -28', ["dataset.image_size = -28", "greater than 0"]),
    ('[dataset]\nimage_size = 30', ["dataset.image_size = 30", "divisible by 4"]),
    ('[dataset]\nsource = "cifar"', ["dataset.source = 'cifar'", "'digits'", "'folder'"]),
    ('[dataset]\nchannels = 2', ["dataset.channels = 2", "1 or 3"]),
    ('[dataset]\nflip = "yes"', ["dataset.flip = 'yes'", "valid boolean"]),
    ('[model]\nchannels = [32, 0, 64]', ["model.channels = [32, 0, 64]", "greater than 0"]),
    ('[model]\nchannels = [32]', ["model.channels", "at least 2"]),
    ('[model]\nchannels = [32, "a"]', ["model.channels[1] = 'a'", "valid integer"]),
    ('[model]\nkernel_size = 4', ["model.kernel_size = 4", "odd"]),
    ('train = 5', ["train = 5", "must be a table"]),
    ('device = "tpu"', ["device = 'tpu'", "'cuda'"]),
    ('[sample]\nsteps = 0', ["sample.steps = 0", "greater than 0"]),
    ('[train\nlr = 1', ["not valid TOML"]),
    # checks across keys name the key that was set (both found by tests/test_fuzz_recipes.py)
    ('[invert]\nedit_class = 0', ["invert.edit_class = 0", "need a class-conditional model"]),
    ('[audio]\nf_max = 1.0', ["audio.n_mels = 32", "audio.f_max = 1 Hz", "covers no STFT bin"]),
]


@pytest.mark.parametrize("text,expected", BAD_RECIPES, ids=[t for t, _ in BAD_RECIPES])
def test_bad_recipes_are_rejected_with_one_clear_line(recipe_file, text, expected):
    path = recipe_file(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    line = str(caught.value)
    assert line.startswith(f"{path}: ")
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"


def test_every_problem_gets_its_own_line(recipe_file):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file('[train]\nlr = -1\nepochs = 0\nbatchsize = 3'))
    assert len(caught.value.problems) == 3
    assert len(str(caught.value).splitlines()) == 3


def test_overrides_are_toml_values(recipe_file):
    recipe = load_recipe(recipe_file(""), ["train.lr=2e-4", "model.channels=[16, 32]",
                                           "dataset.source=shapes", "dataset.flip=true"])
    assert recipe.train.lr == 2e-4 and recipe.model.channels == [16, 32]
    assert recipe.dataset.source == "shapes" and recipe.dataset.flip is True


@pytest.mark.parametrize("override,fragment", [
    ("train.lr", "expected key.path=value"),
    ("train.lr=abc", "--set train.lr=abc: input should be a valid number"),
    ("train.nope=1", "--set train.nope=1: train.nope: unknown key"),
])
def test_bad_overrides_are_named(recipe_file, override, fragment):
    with pytest.raises(RecipeError, match=fragment.replace(".", r"\.").replace("'", "'")):
        load_recipe(recipe_file(""), [override])


def test_a_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.toml")


COSINE_EPSILON = '[schedule]\nkind = "ddpm"\nbeta_schedule = "squaredcos_cap_v2"\n[model]\nkind = "unet2d"\n' \
                 '[train]\nobjective = "epsilon"\n'


def test_a_sampler_the_cosine_schedule_defeats_is_refused_by_the_recipe(recipe_file):
    path = recipe_file(COSINE_EPSILON + '[sample]\nsampler = "heun"\n')
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == (
        f"{path}: sample.sampler = 'heun': cannot sample a model trained with schedule.beta_schedule = "
        "'squaredcos_cap_v2': it starts at sigma = 20,291 (sqrt(alpha_bar) = 4.9e-05), where its steps overshoot "
        "even with the predicted x0 clipped; use one of: ddpm, ddim, pndm, dpm-solver++, euler, euler-ancestral, lms, "
        "unipc")
    load_recipe(path, ["schedule.beta_schedule='linear'"])  # sigma_max 157: offered
    load_recipe(path, ["sample.sampler='pndm'"])  # the sampling loop clips x0 for PNDM


def test_a_run_with_a_refused_sampler_stops_before_training(recipe_file, tmp_path, capsys):
    path = recipe_file(COSINE_EPSILON + '[sample]\nsampler = "heun"\n')
    assert run_cli("run", path, "--out", tmp_path / "run", "--set", "device='cpu'") == 2
    assert "sample.sampler = 'heun'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cross_field_errors_come_from_the_schema():
    with pytest.raises(RecipeError, match="divisible by 8"):
        parse_recipe({"model": {"channels": [8, 8, 8, 8]}, "dataset": {"image_size": 28}})


# ------------------------------------------------------------------ the commands


def test_recipe_check_says_ok_or_exits_2(recipe_file, capsys):
    good, bad = recipe_file("", "good.toml"), recipe_file("[train]\nlr = -1", "bad.toml")
    assert run_cli("recipe", "check", good, "from-scratch") == 0
    assert run_cli("recipe", "check", good, bad) == 2
    captured = capsys.readouterr()
    assert "ok    " in captured.out and "bad.toml: train.lr = -1" in captured.err


def test_recipe_show_writes_every_default_out(recipe_file, capsys):
    assert run_cli("recipe", "show", recipe_file("[train]\nepochs = 9"), "--set", "train.lr=0.01") == 0
    shown = capsys.readouterr().out
    for section in ("[dataset]", "[schedule]", "[model]", "[train]", "[sample]"):
        assert section in shown
    assert "epochs = 9" in shown and "lr = 0.01" in shown and 'source = "digits"' in shown


def test_recipe_show_with_a_profile_shows_the_recipe_the_run_would_keep(capsys):
    assert run_cli("recipe", "show", "from-scratch") == 0
    assert "[profiles.smoke.train]" in capsys.readouterr().out  # the recipe as written carries its profiles
    assert run_cli("recipe", "show", "from-scratch", "--profile", "smoke") == 0
    shown = capsys.readouterr().out
    assert "max_steps = 100" in shown and "[profiles" not in shown  # laid over, so not listed again


def test_recipes_lists_the_builtins_with_descriptions(capsys):
    assert run_cli("recipes") == 0
    out = capsys.readouterr().out
    assert "from-scratch" in out and "BasicUNet" in out


def test_an_unknown_recipe_name_lists_the_builtins(capsys):
    assert run_cli("recipe", "show", "from-scratc") == 2
    assert ("built-ins: audio-spectrogram, class-conditional-digits, ddim-inversion, ddpm-rgb-32, finetune, "
            "finetune-pretrained, from-scratch, guidance-color, latent-shapes, lora-finetune, pixel-shapes, "
            "unet2d-digits, vae-shapes") in capsys.readouterr().err


def test_values_nested_past_any_recipe_are_one_line_not_a_recursion_error(recipe_file, capsys):
    deep = recipe_file("[train]\nlr = " + "[" * 500 + "]" * 500 + "\n")
    assert run_cli("recipe", "check", deep) == 2
    err = capsys.readouterr().err
    assert "values nested more than 32 levels deep" in err and "Traceback" not in err
    assert run_cli("recipe", "show", "from-scratch", "--set", "train.lr=" + "[" * 1000 + "]" * 1000) == 2
    err = capsys.readouterr().err
    assert "--set train.lr=[[[" in err and "Traceback" not in err


def test_a_seed_beyond_64_bits_and_non_finite_floats_are_refused(recipe_file):
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file("seed = 18446744073709551621\n[sample]\nseed = 9223372036854775808\n"))
    assert [p.split(":")[0] for p in error.value.problems] == ["seed = 18446744073709551621",
                                                               "sample.seed = 9223372036854775808"]
    assert load_recipe(recipe_file("seed = 9223372036854775807\n")).seed == 2**63 - 1
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file("[train]\nlr = nan\nsnr_gamma = inf\n[expect]\nfinal_loss_below = inf\n"))
    assert len(error.value.problems) == 3
    assert all("finite number" in p for p in error.value.problems)


def test_a_huge_bad_value_gives_a_short_line(recipe_file):
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file(f"[train]\noptimizer = '{'x' * 1_000_000}'\n"))
    (line,) = error.value.problems
    assert len(line) < 600 and "(1,000,002 characters)" in line


def test_an_attention_head_wider_than_its_block_is_refused_before_training(recipe_file):
    text = "[model]\nkind = 'unet2d'\nattention_head_dim = {}\n"
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file(text.format(100_000)))
    assert error.value.problems == ["model.attention_head_dim = 100000: more than the 64 channels of an attention "
                                    "block, which would have no head; use at most 64 (e.g. 8)"]
    assert load_recipe(recipe_file(text.format(64))).model.attention_head_dim == 64


@pytest.mark.parametrize("key", ["train.lr", "train.snr_gamma", "train.max_grad_norm", "train.lora_alpha",
                                 "guidance.scale", "expect.final_loss_below", "expect.loss_drop_factor_above",
                                 "expect.frechet_normalised_below", "expect.reconstruction_psnr_above",
                                 "expect.guidance_loss_ratio_below"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_inf_and_nan_are_refused_as_not_finite(recipe_file, capsys, key, value):
    section, name = key.split(".")
    assert run_cli("recipe", "check", recipe_file(f"[{section}]\n{name} = {value}\n")) == 2
    err = capsys.readouterr().err
    assert f"{key} = {value}: input should be a finite number" in err and "Traceback" not in err


def test_a_bad_set_value_is_blamed_on_the_set_not_the_recipe_file(recipe_file, capsys):
    path = recipe_file("[train]\nepochs = 9\n")
    assert run_cli("recipe", "show", path, "--set", "train.lr=nan") == 2
    err = capsys.readouterr().err
    assert "--set train.lr=nan: input should be a finite number (learning rate)" in err
    assert str(path) not in err
    assert run_cli("recipe", "show", path, "--set", "train.lr=nan", "--set", "seed.x=1") == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: --set seed.x=1: seed = {'x': 1}: input should be a valid integer")
    assert lines[1].startswith("--set train.lr=nan: input should be a finite number")
    assert run_cli("recipe", "show", path, "--set", "sample.guidance_scale=3") == 2  # a check across sections
    assert capsys.readouterr().err.startswith(
        "error: --set sample.guidance_scale=3: sample.guidance_scale = 3.0: classifier-free guidance needs")
    # a check across keys that names a key the file gave: blamed on the --set that broke it
    assert run_cli("recipe", "show", path, "--set", "train.lr=0.1", "--set", "schedule.kind=ddpm") == 2
    assert capsys.readouterr().err.startswith(
        "error: --set schedule.kind=ddpm: sample.sampler = 'toy': the toy sampler belongs to the toy schedule")


def test_the_recipe_file_keeps_its_own_problems_beside_a_bad_set(recipe_file):
    path = recipe_file("[train]\nlr = -1\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(path, ["train.epochs=-1", "train.lr=1e-3"])  # the --set mends the file's lr
    assert str(error.value) == "--set train.epochs=-1: input should be greater than 0 (passes over the dataset)"
    with pytest.raises(RecipeError) as error:
        load_recipe(path, ["train.epochs=-1"])
    assert str(error.value).splitlines() == [
        f"{path}: train.lr = -1: input should be greater than 0 (learning rate)",
        "--set train.epochs=-1: input should be greater than 0 (passes over the dataset)"]


@pytest.mark.parametrize("item", ["train.lr", "=1", ".=1", "train..lr=1", "train.=1"])
def test_a_set_without_a_whole_key_says_how_to_write_one(recipe_file, item):
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_file(""), [item])
    assert str(error.value) == f"--set {item!r}: expected key.path=value, e.g. train.lr=2e-4"
