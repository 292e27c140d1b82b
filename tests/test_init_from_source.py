"""train.init_from builds the source's own network and schedule: a pipeline saved with the settings the
google/ddpm-* UNets use (which differ from diffusers' defaults without changing a tensor's shape) comes
back bit for bit, from a folder, a run or the Hugging Face cache; the recipe changes only what it sets."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from difflab.diffusion.finetune import load_initial_weights
from difflab.diffusion.models import build_model
from difflab.diffusion.sources import recipe_network, resolve
from difflab.errors import InputError
from difflab.recipe import Recipe, load_recipe, parse_recipe
from tests.conftest import run_cli

# What google/ddpm-celebahq-256's unet/config.json says where diffusers' defaults say otherwise.
GOOGLE_DDPM = {"flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0, "norm_eps": 1e-6,
               "attention_head_dim": None}
# A tiny network of that kind: 8 px RGB, two levels of 32 channels, attention on the second.
TINY_UNET = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
             "block_out_channels": (32, 32), "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
             "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8, **GOOGLE_DDPM}
# A fine-tune that names no network and no schedule of its own: a few steps on 8 px RGB shapes.
FINE_TUNE = """description = "a pretrained pipeline, fine-tuned on shapes"
device = "cpu"
[dataset]
source = "shapes"
num_images = 16
value_range = "-1..1"
[schedule]
kind = "ddpm"
[model]
kind = "unet2d"
[train]
batch_size = 8
max_steps = 2
log_every = 1
sample_every = 0
checkpoint_every = 0
preview_images = 4
[sample]
sampler = "ddim"
steps = 3
num_images = 2
trajectory_steps = 2
trajectory_images = 1
gif = false
[eval]
enabled = false
[expect]
enabled = false
"""


def save_pipeline(folder, **scheduler) -> UNet2DModel:
    """A DDPMPipeline of the tiny google-style UNet, saved to `folder`; returns its UNet."""
    torch.manual_seed(0)
    unet = UNet2DModel(**TINY_UNET)
    with torch.no_grad():  # a trained-looking network: GroupNorm and biases away from their 1 and 0
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler)).save_pretrained(folder)
    return unet.eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    with torch.no_grad():
        return model.eval()(x, torch.tensor([10, 700])).sample


def from_source(recipe: Recipe) -> torch.nn.Module:
    model = build_model(recipe)
    load_initial_weights(model, recipe)
    return model


def fine_tune(tmp_path, init_from: str, *overrides: str) -> int:
    """`difflab run` of FINE_TUNE from `init_from` into tmp_path/run; its exit status."""
    recipe = tmp_path / "fine-tune.toml"
    recipe.write_text(FINE_TUNE)
    sets = [arg for item in [f"train.init_from='{init_from}'", *overrides] for arg in ("--set", item)]
    return run_cli("run", recipe, "--out", tmp_path / "run", *sets)


@pytest.fixture
def pipeline(tmp_path):
    folder = tmp_path / "google-style"
    return folder, save_pipeline(folder)


def test_a_pipeline_with_google_ddpm_settings_comes_back_bit_for_bit(pipeline):
    folder, unet = pipeline
    recipe = parse_recipe({"train": {"init_from": str(folder)}})
    model = from_source(recipe)
    assert (outputs(model) - outputs(unet)).abs().max().item() == 0
    assert {k: model.config[k] for k in GOOGLE_DDPM} == GOOGLE_DDPM
    # The bug this guards against: the same weights in the network the recipe's keys alone describe.
    rebuilt = UNet2DModel.from_config(recipe_network(resolve(recipe).recipe))
    rebuilt.load_state_dict(unet.state_dict())
    assert (outputs(rebuilt) - outputs(unet)).abs().max().item() > 1e-3


def test_the_recipe_changes_only_what_it_sets_and_a_class_embedding_starts_fresh(pipeline):
    folder, unet = pipeline
    recipe = parse_recipe({"model": {"kind": "unet2d", "num_classes": 3}, "train": {"init_from": str(folder)}})
    model = from_source(recipe)
    assert model.config.num_class_embeds == 4 and {k: model.config[k] for k in GOOGLE_DDPM} == GOOGLE_DDPM
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("class_embedding.")}
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in ours.items())
    origins = resolve(recipe).origins
    assert origins["model.num_classes"] == "recipe" and origins["model.block_out_channels"] == "source"


def test_a_setting_the_weights_cannot_take_is_refused_in_one_line(pipeline, tmp_path, capsys):
    folder, _ = pipeline
    code = fine_tune(tmp_path, folder, "model.block_out_channels=[64, 64, 64]")
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "run").exists()
    assert f"model.block_out_channels = [64, 64, 64]: cannot change on the pretrained weights of train.init_from " \
           f"= '{folder}', whose model.block_out_channels is [32, 32]" in err
    assert len(err.splitlines()) == 1


def test_a_network_difflab_does_not_fine_tune_is_named(tmp_path):
    folder = tmp_path / "text-to-image-unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    with pytest.raises(InputError, match="its network is a UNet2DConditionModel; difflab fine-tunes UNet2DModel"):
        build_model(parse_recipe({"train": {"init_from": str(folder)}}))


def test_the_source_schedule_comes_with_it_unless_the_recipe_sets_one(tmp_path):
    folder = tmp_path / "cosine"
    save_pipeline(folder, num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    run = tmp_path / "run"
    assert fine_tune(tmp_path, folder) == 0
    resolved = load_recipe(run / "recipe.toml")
    assert (resolved.schedule.num_train_timesteps, resolved.schedule.beta_schedule) == (500, "squaredcos_cap_v2")
    assert resolved.train.objective == "v_prediction" and resolved.model.block_out_channels == [32, 32]
    scheduler = json.loads((run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["num_train_timesteps"], scheduler["beta_schedule"]) == (500, "squaredcos_cap_v2")
    explicit = resolve(parse_recipe({"schedule": {"num_train_timesteps": 200}, "train": {"init_from": str(folder)}}))
    assert explicit.recipe.schedule.num_train_timesteps == 200 and explicit.origins["schedule.num_train_timesteps"] == "recipe"
    assert explicit.recipe.schedule.beta_schedule == "squaredcos_cap_v2"


def test_a_run_the_lab_starts_trains_with_the_source_schedule_and_records_it(tmp_path):
    from difflab.jobs.training import TrainingJob
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    save_pipeline(tmp_path / "cosine", num_train_timesteps=500, beta_schedule="squaredcos_cap_v2",
                  prediction_type="v_prediction")
    path = tmp_path / "fine-tune.toml"
    path.write_text(FINE_TUNE.replace("[train]\n", "[train]\ninit_from = 'cosine'\n"))
    # as the lab holds a recipe after any edit: every key written out, the source beside the recipe file
    recipe = Recipe.model_validate(load_recipe(path).model_dump(mode="json"))
    run = RunDir.create(tmp_path / "run", recipe)
    worker = Worker("cpu")
    try:
        handle = worker.submit(TrainingJob(recipe, run, path.parent))
        assert list(worker.iter_events(handle.job_id))[-1].status == "finished"
    finally:
        worker.shutdown(timeout=30)
    saved = load_recipe(run.recipe_path)
    assert (saved.schedule.num_train_timesteps, saved.schedule.beta_schedule) == (500, "squaredcos_cap_v2")
    assert saved.train.objective == "v_prediction" and saved.train.init_from == str(tmp_path / "cosine")
    scheduler = json.loads((run.pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["num_train_timesteps"], scheduler["prediction_type"]) == (500, "v_prediction")


def test_a_run_fine_tuned_from_it_loads_in_plain_diffusers_and_samples(pipeline, tmp_path):
    folder, _ = pipeline
    run = tmp_path / "run"
    assert fine_tune(tmp_path, folder) == 0
    tuned = DDPMPipeline.from_pretrained(run / "pipeline")
    assert {k: tuned.unet.config[k] for k in GOOGLE_DDPM} == GOOGLE_DDPM
    images = tuned(batch_size=1, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 3) and 0 <= images.min() and images.max() <= 1
    # a run folder is a source too: its exported model, its recipe's schedule
    again = from_source(parse_recipe({"train": {"init_from": str(run)}}))
    assert (outputs(again) - outputs(tuned.unet)).abs().max().item() == 0


def test_a_checkpoint_of_a_fine_tune_rebuilds_the_source_network_from_the_run_recipe(pipeline, tmp_path):
    from difflab.diffusion.loading import checkpoint_model

    folder, _ = pipeline
    assert fine_tune(tmp_path, folder, "train.checkpoint_every=2") == 0
    run = tmp_path / "run"
    model = checkpoint_model(run / "checkpoints" / "step_000002")  # as a resume or `difflab sample` builds it
    assert {k: model.config[k] for k in GOOGLE_DDPM} == GOOGLE_DDPM
    assert (outputs(model) - outputs(UNet2DModel.from_pretrained(run / "model"))).abs().max().item() == 0


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline, as huggingface_hub reads it at each call."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_in_the_hugging_face_cache_comes_back_bit_for_bit(pipeline, hub_cache, tmp_path):
    folder, unet = pipeline
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--tiny-owner--ddpm-tiny"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    recipe = parse_recipe({"train": {"init_from": "tiny-owner/ddpm-tiny"}})
    model = from_source(recipe)
    assert (outputs(model) - outputs(unet)).abs().max().item() == 0
    assert fine_tune(tmp_path, "tiny-owner/ddpm-tiny") == 0
    assert DDPMPipeline.from_pretrained(tmp_path / "run" / "pipeline").unet.config.freq_shift == 1


def test_a_hub_id_that_is_not_cached_offline_is_bad_input(hub_cache, tmp_path, capsys):
    assert fine_tune(tmp_path, "nobody/no-such-ddpm") == 2
    assert "train.init_from = 'nobody/no-such-ddpm': not a local folder, not in the Hugging Face cache" in \
        capsys.readouterr().err
    with pytest.raises(InputError):
        build_model(parse_recipe({"train": {"init_from": "nobody/no-such-ddpm"}}))
    # an estimate of sizes never waits on the network: the recipe's own [model] stands in
    assert build_model(parse_recipe({"train": {"init_from": "nobody/no-such-ddpm"}}), estimate=True)


@pytest.mark.anyio
async def test_the_model_screen_says_where_each_setting_comes_from(pipeline, tmp_path):
    from textual.widgets import Static

    from difflab.screens.app import DifflabApp
    from tests.conftest import wait_for_probe
    from tests.test_tui_fit import cut_widgets

    folder, _ = pipeline
    recipe = tmp_path / "fine-tune.toml"
    recipe.write_text(FINE_TUNE.replace("[train]\n", f"[train]\ninit_from = '{folder.name}'\n"))
    app = DifflabApp(recipe)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_for_probe(pilot)
        shown = app.screen.query_one("#origins", Static)
        lines = shown.content.plain.splitlines()
        assert shown.display and "model.block_out_channels = [32, 32]  (source)" in lines
        assert "flip_sin_to_cos = False  (source)" in lines
        assert "UNet2DModel · 285,667 parameters" in str(app.screen.query_one("#headline").render())
        assert cut_widgets(app.screen) == []  # long values (lists of block types) wrap at 80 columns


def test_the_model_command_says_where_each_setting_comes_from(pipeline, tmp_path, capsys):
    folder, _ = pipeline
    recipe = tmp_path / "fine-tune.toml"
    recipe.write_text(FINE_TUNE)
    assert run_cli("model", recipe, "--set", f"train.init_from='{folder}'", "--set", "model.dropout=0.1") == 0
    out = capsys.readouterr().out
    rows = {cells[1].strip(): (cells[2].strip(), cells[3].strip())
            for cells in (line.split("│") for line in out.splitlines()) if len(cells) == 5}
    assert f"'source' is train.init_from = {folder}" in out
    assert rows["model.block_out_channels"] == ("[32, 32]", "source")
    assert rows["model.dropout"] == ("0.1", "recipe")
    assert rows["UNet2DModel.freq_shift"] == ("1", "source") and rows["UNet2DModel.norm_eps"] == ("1e-06", "source")


# ------------------------------------------------------------------ the built-in recipe


def test_the_built_in_fine_tune_replays_offline_from_a_pipeline_folder(pipeline, tmp_path):
    folder, _ = pipeline
    run = tmp_path / "run"
    quick = ["train.max_steps=2", "train.batch_size=8", "dataset.num_images=16", "sample.steps=3",
             "sample.num_images=2", "sample.trajectory_steps=2", "sample.trajectory_images=1",
             "eval.enabled=false", "expect.enabled=false"]
    # unconditional, as the course's fine-tune (the smoke profile's own source is class-conditional)
    plain = ["model.num_classes=0", "sample.class_labels=[]", "sample.guidance_scale=1.0"]
    sets = [arg for item in [f"train.init_from='{folder}'", *quick, *plain] for arg in ("--set", item)]
    assert run_cli("run", "finetune-pretrained", "--profile", "smoke", "--out", run, "--device", "cpu", *sets) == 0
    recipe = load_recipe(run / "recipe.toml")
    assert recipe.dataset.channels == 3 and recipe.dataset.image_size == 16  # the source's, the profile's
    tuned = DDPMPipeline.from_pretrained(run / "pipeline")
    assert {k: tuned.unet.config[k] for k in GOOGLE_DDPM} == GOOGLE_DDPM and tuned.unet.config.sample_size == 16
    images = tuned(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_the_built_in_fine_tune_without_its_hub_model_says_so(hub_cache, tmp_path, capsys):
    assert run_cli("run", "finetune-pretrained", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("error: train.init_from = 'google/ddpm-celebahq-256': not a local folder, "
                                           "not in the Hugging Face cache")
    assert "--set train.init_from=PATH" in err and not (tmp_path / "run").exists()
