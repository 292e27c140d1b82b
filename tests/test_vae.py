"""A VAE run (model.kind = 'autoencoder-kl'): trained on all but a held-out fifth, its loss's terms
logged, saved as an AutoencoderKL that plain diffusers loads with the scaling factor measured on its
latents, reported (compression, held-out MSE and PSNR), held to expect.vae_psnr_above, and started
from any AutoencoderKL folder through train.init_from."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel

from difflab.diffusion.data import load_dataset
from difflab.diffusion.finetune import load_initial_weights
from difflab.diffusion.latents import LatentCodec
from difflab.diffusion.models import build_model
from difflab.diffusion.objectives import VaeObjective
from difflab.diffusion.sources import resolve
from difflab.diffusion.vae_report import reconstruction_mse
from difflab.errors import InputError
from difflab.jobs.vae_training import split_for_vae
from difflab.recipe import load_recipe, parse_recipe
from difflab.screens.training_stats import vae_lines
from tests.conftest import run_cli, tiny_args
from tests.test_init_from_source import hub_cache  # noqa: F401 (a fixture: an offline Hugging Face cache)
from tests.test_training_syncs import count_host_reads

# 40 RGB shapes at 8 px through a two-level VAE of 8/16 channels: 4x4x4 latents, a few seconds.
TINY_VAE = [
    "dataset.source=shapes", "dataset.num_images=40", "dataset.image_size=8", "dataset.channels=3",
    "dataset.value_range='-1..1'", "model.kind='autoencoder-kl'", "model.block_out_channels=[8, 16]",
    "model.layers_per_block=1", "model.norm_num_groups=8", "train.optimizer=adamw", "train.batch_size=8",
    "train.max_steps=6", "train.log_every=2", "train.sample_every=3", "train.checkpoint_every=0",
    "train.preview_images=4", "eval.num_samples=6", "expect.enabled=false", "device='cpu'",
]
# What a VAE recipe says when its network comes from train.init_from: the kind, the data, the run.
VAE_FINE_TUNE = {
    "device": "cpu", "dataset": {"source": "shapes", "num_images": 40, "image_size": 8, "channels": 3,
                                 "value_range": "-1..1"},
    "model": {"kind": "autoencoder-kl"}, "train": {"batch_size": 8, "max_steps": 2, "log_every": 1,
                                                   "sample_every": 0, "checkpoint_every": 0},
    "expect": {"enabled": False},
}


def train_vae(run, *extra: str) -> int:
    """`difflab run` of the tiny VAE into `run` (an empty recipe beside it, the settings as --set)."""
    recipe = run.parent / "empty.toml"
    recipe.write_text("")
    return run_cli("run", recipe, "--out", run, *tiny_args(*extra, base=TINY_VAE))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """One tiny VAE run that several tests read."""
    run = tmp_path_factory.mktemp("vae") / "run"
    assert train_vae(run) == 0
    return run


def summary_of(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def tiny_vae(**config) -> AutoencoderKL:
    """A small random AutoencoderKL, its weights moved off their initial values (as trained ones are)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=8, **config)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return vae


# ---------------------------------------------------------------- training and its files


def test_the_run_saves_a_vae_plain_diffusers_loads_with_the_scaling_factor_measured_on_its_latents(vae_run):
    summary = summary_of(vae_run)
    vae = AutoencoderKL.from_pretrained(vae_run / "vae")
    assert vae.config.scaling_factor == pytest.approx(summary["vae"]["scaling_factor"])
    recipe = load_recipe(vae_run / "recipe.toml")
    train, _ = split_for_vae(recipe, load_dataset(recipe.dataset, seed=recipe.seed))
    with torch.no_grad():
        latents = vae.encode(train.images).latent_dist.mean
    # scaled by it, the training set's latents have unit variance: what a diffusion model wants
    assert float((latents * vae.config.scaling_factor).std()) == pytest.approx(1.0, abs=1e-4)
    assert (vae_run / "checkpoints" / "step_000006" / "model.safetensors").is_file()
    assert {p.name for p in (vae_run / "samples").iterdir()} >= {"step_000003.png", "final.png", "latents.png"}
    assert summary["vae"]["latents_figure"] == str(vae_run / "samples" / "latents.png")


def test_metrics_carry_the_loss_terms_of_each_log_interval(vae_run):
    rows = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    for row in rows:  # the loss is reconstruction MSE + kl_weight x KL, each averaged over the interval
        assert row["kl"] > 0 and row["loss"] == pytest.approx(row["reconstruction"] + 1e-6 * row["kl"], rel=1e-5)


def test_the_held_out_images_are_never_trained_on(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    original = VaeObjective.loss

    def recording(self, model, x, generator, labels=None):
        seen.append(x.detach().clone())
        return original(self, model, x, generator, labels)

    monkeypatch.setattr(VaeObjective, "loss", recording)
    run = tmp_path / "run"
    assert train_vae(run, "train.max_steps=10", "train.sample_every=0") == 0
    recipe = load_recipe(run / "recipe.toml")
    data = load_dataset(recipe.dataset, seed=recipe.seed)
    train, held_out = split_for_vae(recipe, data)
    assert (len(train), len(held_out)) == (34, 6)  # eval.num_samples = 6, under a fifth of 40
    trained = torch.cat(seen)
    assert len(trained) == 2 * 34  # 10 steps: two epochs of 34 images (five batches each, the last short)
    for image in held_out.images:
        assert not (trained == image).flatten(1).all(1).any()
    for image in trained:  # and each trained image is one of the training set's
        assert (train.images == image).flatten(1).all(1).any()
    assert [len(s) for s in split_for_vae(recipe, data)] == [34, 6]  # the same split on a resume


def test_the_report_is_measured_on_the_held_out_images_and_its_figures_agree(vae_run):
    vae = summary_of(vae_run)["vae"]
    assert vae["image_shape"] == [3, 8, 8] and vae["latent_shape"] == [4, 4, 4]
    assert vae["compression_factor"] == pytest.approx(3 * 8 * 8 / (4 * 4 * 4))
    assert vae["psnr_db"] == pytest.approx(10 * math.log10(1 / vae["mse"]))
    assert vae["scaling_factor"] * vae["latent_std_all"] == pytest.approx(1.0)
    assert len(vae["latent_mean"]) == len(vae["latent_std"]) == 4
    assert (vae["held_out_images"], vae["train_images"]) == (6, 34)
    recipe = load_recipe(vae_run / "recipe.toml")
    _, held_out = split_for_vae(recipe, load_dataset(recipe.dataset, seed=recipe.seed))
    codec = LatentCodec(AutoencoderKL.from_pretrained(vae_run / "vae"), 1.0, held_out.value_range)
    assert reconstruction_mse(codec, held_out.images) == pytest.approx(vae["mse"], rel=1e-4)
    # the lab's Train screen says the same figures
    lines = vae_lines(summary_of(vae_run))
    assert f"PSNR {vae['psnr_db']:.2f} dB" in lines[1] and "3x8x8 images -> 4x4x4 latents, 3x fewer" in lines[0]


def test_the_cli_prints_the_report_and_a_missed_expectation_exits_1(tmp_path, capsys):
    code = train_vae(tmp_path / "run", "train.max_steps=2", "train.sample_every=0", "expect.enabled=true",
                     "expect.vae_psnr_above=99.0")
    assert code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "held-out reconstructions" in out and "scaling factor" in out and "3×8×8 = 192 numbers" in out
    assert "FAIL expect.vae_psnr_above = 99:" in out
    record = summary_of(tmp_path / "run")["expectations"][0]
    assert record["name"] == "vae_psnr_above" and not record["passed"]


def test_too_few_images_to_hold_any_out_is_bad_input(tmp_path, capsys):
    assert train_vae(tmp_path / "run", "dataset.num_images=4") == 2
    err = capsys.readouterr().err
    assert "dataset 'shapes' has 4 images: a VAE run holds out a fifth of them" in err and len(err.splitlines()) == 1


def test_a_vae_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    steps = count_host_reads(monkeypatch, "train_step")
    logs = count_host_reads(monkeypatch, "log")
    assert train_vae(tmp_path / "run", "train.sample_every=0") == 0
    assert len(steps) == 6 and all(reads == [] for reads in steps), steps
    # per log line: the divergence flag, the loss's mean, and the terms' means together
    assert len(logs) == 3 and all(len(reads) <= 3 for reads in logs), logs


# ---------------------------------------------------------------- init_from


def save_as_pipeline(vae: AutoencoderKL, folder) -> None:
    """Stable Diffusion's layout: the VAE in vae/ beside model_index.json (the other parts left out)."""
    vae.save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "vae": ["diffusers", "AutoencoderKL"]}))


@pytest.mark.parametrize("layout", ["vae-folder", "pipeline", "hub-cache"])
def test_init_from_loads_an_autoencoder_kl_bit_for_bit_with_its_own_config(tmp_path, layout, request):
    source = tiny_vae(latent_channels=3)
    if layout == "vae-folder":
        folder = tmp_path / "vae"
        source.save_pretrained(folder)
    elif layout == "pipeline":
        folder = tmp_path / "pipeline"
        save_as_pipeline(source, folder)
    else:  # a hub id whose pipeline is in the Hugging Face cache (offline): its vae/ subfolder
        revision = "0123456789abcdef0123456789abcdef01234567"
        repo = request.getfixturevalue("hub_cache") / "models--tiny-owner--sd-tiny"
        save_as_pipeline(source, repo / "snapshots" / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        folder = "tiny-owner/sd-tiny"
    recipe = parse_recipe({**VAE_FINE_TUNE, "train": {**VAE_FINE_TUNE["train"], "init_from": str(folder)}})
    resolution = resolve(recipe)
    resolved = resolution.recipe
    # the source's settings, where the recipe sets none: 3 latent channels, one layer per block
    assert (resolved.model.latent_channels, resolved.model.layers_per_block) == (3, 1)
    assert resolution.origins["model.latent_channels"] == "source"
    model = build_model(resolved)
    line = load_initial_weights(model, resolved)
    assert line.startswith(f"initialised from {folder}")
    theirs = source.state_dict()
    assert model.state_dict().keys() == theirs.keys()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in model.state_dict().items())


def test_a_run_fine_tunes_a_vae_run_and_records_the_source(tmp_path, vae_run, capsys):
    run = tmp_path / "run"
    assert train_vae(run, "train.max_steps=2", "train.sample_every=0", f"train.init_from='{vae_run}'") == 0
    assert f"initialised from {vae_run}" in capsys.readouterr().out
    summary = summary_of(run)
    assert summary["init_from"] == str(vae_run) and "psnr_db" in summary["vae"]


def test_init_from_a_unet_is_refused_naming_the_key(tmp_path, capsys):
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    unet.save_pretrained(tmp_path / "unet")
    assert train_vae(tmp_path / "run", f"train.init_from='{tmp_path / 'unet'}'") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert f"train.init_from = '{tmp_path / 'unet'}': its network is a UNet2DModel; model.kind = " \
           f"'autoencoder-kl' starts from an AutoencoderKL" in err
    # and the other way round: a denoiser's recipe pointed at a VAE says how to train it as one
    tiny_vae().save_pretrained(tmp_path / "vae")
    recipe = parse_recipe({"schedule": {"kind": "ddpm"}, "sample": {"sampler": "ddim"}, "model": {"kind": "unet2d"},
                           "train": {"init_from": str(tmp_path / "vae")}})
    with pytest.raises(InputError, match="set model.kind = 'autoencoder-kl'"):
        resolve(recipe)
