"""Chapter 3 and LoRA on tiny models: fine-tuning, class conditioning, CFG, loss guidance, LoRA, sweeps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from difflab.diffusion.conditioning import drop_labels
from difflab.errors import RecipeError
from difflab.recipe import parse_recipe
from tests.conftest import TINY_DDPM, read_losses, run_cli, tiny_args

# TINY_DDPM (8 px RGB shapes, 2-level UNet2DModel) made class-conditional on the 3 shapes.
CONDITIONAL = [*TINY_DDPM, "model.num_classes=3", "train.label_dropout=0.2", "train.ema=false",
               "sample.gif=false"]


def cond_args(*extra: str) -> list[str]:
    return tiny_args(*extra, base=CONDITIONAL)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained tiny class-conditional DDPM run: the source every test here starts from."""
    run = tmp_path_factory.mktemp("source") / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *cond_args(
        "train.epochs=10", "train.lr=5e-3", "train.sample_every=0", "train.checkpoint_every=20")) == 0
    return run


def sample_setup(run, *overrides: str):
    from difflab.diffusion.loading import run_setup

    return run_setup(run, list(overrides), "cpu")


# ------------------------------------------------------------------ fine-tuning


def test_a_fine_tune_from_a_saved_pipeline_starts_where_the_source_is(source_run, tmp_path):
    short = ("train.max_steps=2", "train.sample_every=0", "train.checkpoint_every=0")
    assert run_cli("run", "ddpm-rgb-32", "--out", tmp_path / "scratch", *cond_args(*short)) == 0
    assert run_cli("run", "ddpm-rgb-32", "--out", tmp_path / "tuned", *cond_args(
        *short, f"train.init_from='{source_run / 'pipeline'}'")) == 0
    scratch, tuned = read_losses(tmp_path / "scratch")[0], read_losses(tmp_path / "tuned")[0]
    source_last = read_losses(source_run)[-1]
    assert tuned < 0.75 * scratch  # same batches and noise: only the starting weights differ
    assert tuned < 2 * source_last
    summary = json.loads((tmp_path / "tuned" / "summary.json").read_text())
    assert summary["init_from"] == str(source_run / "pipeline")


def test_init_from_a_run_whose_shapes_do_not_fit_names_the_key_and_both_values(source_run, tmp_path, capsys):
    code = run_cli("run", "ddpm-rgb-32", "--out", tmp_path / "grey", *cond_args(
        "dataset.channels=1", f"train.init_from='{source_run}'"))
    err = capsys.readouterr().err
    assert code == 2
    assert (f"dataset.channels = 1: cannot change on the pretrained weights of train.init_from = '{source_run}', "
            f"whose dataset.channels is 3") in err
    assert not (tmp_path / "grey").exists()  # nothing ran: no empty run left behind


def test_init_from_a_missing_folder_is_bad_input(tmp_path, capsys):
    code = run_cli("run", "ddpm-rgb-32", "--out", tmp_path / "r", *cond_args(f"train.init_from='{tmp_path}/a/b/c'"))
    assert code == 2 and "no such folder" in capsys.readouterr().err


# ------------------------------------------------------------------ class conditioning and CFG


def test_label_dropout_replaces_a_share_and_every_unlabelled_image_by_no_class():
    labels = torch.tensor([0, 1, 2, -1] * 500)
    generator = torch.Generator().manual_seed(0)
    dropped = drop_labels(labels, 0.25, 3, generator)
    assert (dropped[labels == -1] == 3).all()
    share = (dropped[labels >= 0] == 3).float().mean().item()
    assert 0.2 < share < 0.3
    kept = labels >= 0
    assert ((dropped[kept] == labels[kept]) | (dropped[kept] == 3)).all()
    assert torch.equal(drop_labels(labels[kept], 0.0, 3, generator), labels[kept])


def test_a_class_conditional_run_trains_every_class_embedding_the_null_one_included(source_run):
    from diffusers import UNet2DModel

    from difflab.diffusion.models import build_model
    from difflab.runtime.runs import RunDir

    trained = UNet2DModel.from_pretrained(source_run / "model")
    assert trained.config.num_class_embeds == 4  # circle, square, triangle + "no class"
    _, recipe = RunDir.open(source_run)
    torch.manual_seed(recipe.seed)
    initial = build_model(recipe).class_embedding.weight
    changed = (trained.class_embedding.weight - initial).abs().sum(dim=1)
    assert (changed > 0).all()
    summary = json.loads((source_run / "summary.json").read_text())
    assert summary["class_names"] == ["circle", "square", "triangle"]


def test_classifier_free_guidance_scale_changes_the_samples(source_run):
    from difflab.diffusion.generate import generate

    images = {scale: generate(sample_setup(source_run, f"sample.guidance_scale={scale}",
                                           "sample.class_labels=[1]"), 4, 4) for scale in (0, 1, 3)}
    assert not torch.allclose(images[0], images[3], atol=1e-3)
    assert not torch.allclose(images[1], images[3], atol=1e-3)
    # scale 3 extrapolates from the unconditional prediction past the conditional one
    assert (images[3] - images[0]).abs().mean() > (images[1] - images[0]).abs().mean()


def test_more_classes_than_the_model_has_is_bad_input(tmp_path, capsys):
    code = run_cli("run", "ddpm-rgb-32", "--out", tmp_path / "r", *cond_args("model.num_classes=2"))
    assert code == 2
    assert "model.num_classes = 2: dataset 'shapes' has 3 classes" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"num_classes": 3}}, "model.num_classes = 3: the basic-unet has no class input"),
    ({"sample": {"guidance_scale": 3.0}}, "classifier-free guidance needs a class-conditional model"),
    ({"model": {"kind": "unet2d", "num_classes": 3, "norm_num_groups": 8}, "sample": {"class_labels": [3]}},
     "sample.class_labels = [3]: [3] outside 0..2"),
    ({"guidance": {"function": "color"}}, "loss guidance nudges a diffusers sampler's steps"),
    ({"guidance": {"color": [0.1, 1.5, 0.0]}}, "guidance.color = [0.1, 1.5, 0.0]: each of red, green, blue"),
    ({"expect": {"guidance_loss_ratio_below": 0.5}},
     "expect.guidance_loss_ratio_below: compares samples with and without loss guidance, but guidance.function = 'none'"),
])
def test_conditioning_and_guidance_settings_are_validated(overrides, message):
    with pytest.raises(RecipeError) as error:
        parse_recipe(overrides, "r.toml")
    assert message in str(error.value)


# ------------------------------------------------------------------ loss guidance


def test_colour_guidance_moves_the_mean_colour_toward_the_target_and_records_its_norm(source_run):
    from difflab.diffusion.generate import trajectory
    from difflab.diffusion.render import to_unit

    target = torch.tensor([0.1, 0.9, 0.5]).view(1, 3, 1, 1)
    errors, paths = {}, {}
    for scale in (0, 40):
        setup = sample_setup(source_run, "guidance.function='color'", f"guidance.scale={scale}",
                             "guidance.color=[0.1, 0.9, 0.5]", "sample.steps=8")
        paths[scale] = trajectory(setup, 4, 8)
        errors[scale] = (to_unit(paths[scale].final, setup.value_range) - target).abs().mean().item()
    assert errors[40] < 0.7 * errors[0]
    assert paths[0].guidance_norms == [None] * 8  # scale 0: no guidance at all
    assert len(paths[40].guidance_norms) == 8 and all(n > 0 for n in paths[40].guidance_norms)


@pytest.mark.parametrize("limit, code, verdict", [(0.8, 0, "pass"), (0.02, 1, "FAIL")])
def test_a_colour_guided_run_measures_the_colour_error_with_and_without_guidance(tmp_path, capsys, recipe_file,
                                                                                  limit, code, verdict):
    run = tmp_path / "run"
    args = tiny_args("guidance.function='color'", "guidance.scale=40", "sample.steps=8", "sample.gif=false",
                     "train.sample_every=0", "train.checkpoint_every=0", "expect.enabled=true",
                     f"expect.guidance_loss_ratio_below={limit}", base=TINY_DDPM)
    assert run_cli("run", recipe_file(""), "--out", run, *args) == code
    assert f"{verdict}  expect.guidance_loss_ratio_below = {limit:g}:" in capsys.readouterr().out
    effect = json.loads((run / "summary.json").read_text())["guidance"]
    assert effect["function"] == "color" and effect["scale"] == 40 and effect["images"] == 4
    # the same noise both times, so guidance alone moved the colour toward (0.1, 0.9, 0.5)
    assert 0.02 < effect["loss_guided"] / effect["loss_unguided"] < 0.8
    assert effect["loss_ratio"] == pytest.approx(effect["loss_guided"] / effect["loss_unguided"], abs=1e-3)


def test_guidance_through_the_model_also_pulls_toward_the_colour(source_run):
    from difflab.diffusion.generate import generate
    from difflab.diffusion.render import to_unit

    target = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    errors = []
    for scale in (0, 40):
        setup = sample_setup(source_run, "guidance.function='color'", f"guidance.scale={scale}",
                             "guidance.color=[0.9, 0.1, 0.1]", "guidance.through_model=true")
        errors.append((to_unit(generate(setup, 2, 4), setup.value_range) - target).abs().mean().item())
    assert errors[1] < errors[0]


def test_classifier_guidance_raises_the_share_of_the_target_class(source_run):
    from difflab.diffusion.data import load_dataset
    from difflab.diffusion.generate import generate
    from difflab.diffusion.reference import predict, reference_classifier
    from difflab.diffusion.render import to_unit

    shares = {}
    for scale in (0, 0.1):  # guidance_scale 0: the unconditional model, so only the classifier pulls
        setup = sample_setup(source_run, "sample.guidance_scale=0", "guidance.function='classifier'",
                             "guidance.target_class=2", f"guidance.scale={scale}", "sample.steps=6")
        reference = reference_classifier(load_dataset(setup.recipe.dataset, source_run, setup.recipe.seed))
        predicted = predict(reference.model, to_unit(generate(setup, 24, 6).cpu(), setup.value_range)).argmax(-1)
        shares[scale] = float((predicted == 2).float().mean())
    assert shares[0.1] > shares[0] + 0.2, shares


DDPM = {"schedule": {"kind": "ddpm"}, "model": {"kind": "unet2d"}, "sample": {"sampler": "ddim"}}


@pytest.mark.parametrize("overrides, message", [
    ({**DDPM, "guidance": {"function": "classifier", "target_class": 10}},
     "guidance.target_class = 10: dataset 'digits' has 10 classes, so it must be between 0 and 9"),
    ({**DDPM, "dataset": {"source": "shapes"}, "guidance": {"function": "classifier", "target_class": 3}},
     "dataset 'shapes' has 3 classes"),
    ({"guidance": {"function": "classifier"}}, "loss guidance nudges a diffusers sampler's steps"),
])
def test_classifier_guidance_settings_are_validated(overrides, message):
    with pytest.raises(RecipeError) as error:
        parse_recipe(overrides, "r.toml")
    assert message in str(error.value)


def test_classifier_guidance_on_a_folder_without_classes_is_bad_input(source_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "loose"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"{i}.png")
    code = run_cli("sample", source_run, "--out", tmp_path / "s", "--set", "dataset.source='folder'",
                   "--set", f"dataset.path='{folder}'", "--set", "guidance.function='classifier'",
                   "--set", "guidance.scale=0.1")
    assert code == 2
    assert "guidance.function = 'classifier': no reference classifier" in capsys.readouterr().err


def test_every_guidance_function_a_recipe_may_name_is_registered():
    from difflab.diffusion.guidance import GUIDANCE
    from difflab.recipe import GUIDANCE_FUNCTIONS, GuidanceConfig

    assert set(GUIDANCE_FUNCTIONS) == {"none", *GUIDANCE}
    assert set(GuidanceConfig.model_fields["function"].annotation.__args__) == set(GUIDANCE_FUNCTIONS)


# ------------------------------------------------------------------ LoRA


def test_lora_trains_only_adapters_and_the_saved_adapter_reloads_to_identical_outputs(source_run, tmp_path):
    from diffusers import UNet2DModel

    from difflab.diffusion.loading import checkpoint_model
    from difflab.diffusion.lora import load_lora
    from difflab.diffusion.models import denoise

    run = tmp_path / "lora"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *cond_args(
        f"train.init_from='{source_run / 'pipeline'}'", "train.lora_rank=4", "train.lr=1e-2",
        "train.sample_every=0", "train.checkpoint_every=0", "train.max_steps=3")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 3

    # the checkpoint's frozen weights are exactly the source's; the adapters moved
    source = load_file(source_run / "model" / "diffusion_pytorch_model.safetensors")
    state = load_file(next((run / "checkpoints").iterdir()) / "model.safetensors")
    frozen = {k.replace(".base_layer", ""): v for k, v in state.items() if ".lora_" not in k}
    assert frozen.keys() == source.keys() and all(torch.equal(frozen[k], source[k]) for k in source)
    assert any(v.abs().sum() > 0 for k, v in state.items() if ".lora_B." in k)  # B starts at zero

    # the adapter file holds adapter weights only, and base + adapter == the trained model
    adapter = load_file(run / "lora" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    base = UNet2DModel.from_pretrained(source_run / "pipeline" / "unet")
    load_lora(base, run / "lora")
    trained = checkpoint_model(next((run / "checkpoints").iterdir()))
    merged = UNet2DModel.from_pretrained(run / "model")  # what plain diffusers loads
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    with torch.no_grad():
        reloaded = denoise(base.eval(), x, t, y)
        assert torch.allclose(reloaded, denoise(trained.eval(), x, t, y), atol=1e-5)
        assert torch.allclose(reloaded, denoise(merged.eval(), x, t, y), atol=1e-5)
        assert not torch.allclose(reloaded, denoise(UNet2DModel.from_pretrained(
            source_run / "pipeline" / "unet").eval(), x, t, y), atol=1e-5)


def test_saving_and_loading_an_adapter_gives_identical_outputs(tmp_path):
    from difflab.diffusion.lora import add_lora, load_lora, save_lora
    from difflab.diffusion.models import build_model, denoise
    from difflab.recipe import TrainConfig

    recipe = parse_recipe({k: v for k, v in _tiny_unet().items()})
    torch.manual_seed(0)
    base_state = build_model(recipe).state_dict()
    model = build_model(recipe)
    model.load_state_dict(base_state)
    cfg = TrainConfig(lora_rank=2, lora_targets=["to_q", "to_v", "conv1"])
    add_lora(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_lora(model, cfg, tmp_path / "adapter")
    fresh = build_model(recipe)
    fresh.load_state_dict(base_state)
    load_lora(fresh, tmp_path / "adapter")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(denoise(model.eval(), x), denoise(fresh.eval(), x))


def test_lora_targets_that_match_no_layer_say_which_names_exist():
    from difflab.diffusion.lora import add_lora
    from difflab.diffusion.models import build_model
    from difflab.errors import InputError
    from difflab.recipe import TrainConfig

    with pytest.raises(InputError) as error:
        add_lora(build_model(parse_recipe(_tiny_unet())), TrainConfig(lora_rank=2, lora_targets=["to_qq"]))
    assert "train.lora_targets = ['to_qq']" in str(error.value) and "to_q" in str(error.value)


def _tiny_unet() -> dict:
    return {"dataset": {"channels": 3, "image_size": 8},
            "model": {"kind": "unet2d", "block_out_channels": [8, 16], "layers_per_block": 1,
                      "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                      "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8}}


# ------------------------------------------------------------------ sweeps and the class grid


def test_a_guidance_scale_sweep_writes_one_labelled_grid_and_its_numbers(source_run, tmp_path):
    from PIL import Image

    out = tmp_path / "sweep"
    assert run_cli("sample", source_run, "--sweep", "guidance_scale=0,3", "--num-images", "3", "--out", out) == 0
    png = next(out.glob("sweep-guidance_scale-*.png"))
    rows = json.loads(png.with_suffix(".json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["guidance_scale = 0", "guidance_scale = 3"]
    assert Image.open(png).height > 2 * 8 * 2  # two rows of 8 px images drawn at 2x


def test_the_class_grid_and_a_checkpoint_sweep_have_one_row_each(source_run, tmp_path):
    assert run_cli("sample", source_run, "--grid", "classes", "--num-images", "2", "--out", tmp_path) == 0
    rows = json.loads(next(tmp_path.glob("sweep-class-*.json")).read_text())["rows"]
    assert [r["label"] for r in rows] == ["0: circle", "1: square", "2: triangle"]
    assert run_cli("sample", source_run, "--sweep", "checkpoint=all", "--num-images", "2", "--out", tmp_path) == 0
    rows = json.loads(next(tmp_path.glob("sweep-checkpoint-*.json")).read_text())["rows"]
    assert [r["label"] for r in rows] == ["step 20", "step 40", "final"]


def test_a_sweep_value_the_recipe_refuses_is_bad_input(source_run, tmp_path, capsys):
    assert run_cli("sample", source_run, "--sweep", "guidance_scale=1,-2", "--out", tmp_path) == 2
    assert "sample.guidance_scale = -2" in capsys.readouterr().err
    assert run_cli("sample", source_run, "--sweep", "checkpoint=7", "--out", tmp_path) == 2
    assert "no such checkpoint" in capsys.readouterr().err
