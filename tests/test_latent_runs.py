"""Latent runs: a UNet trained on a VAE's latents, and everything a run offers on top of it.

The dataset is encoded once, RUN/pipeline is a standard diffusers pipeline holding the VAE
(plain diffusers samples it without difflab), and `difflab sample / eval / invert` and the
sweeps take a latent run like any other. A tiny random AutoencoderKL stands in for a trained
one: these tests check the plumbing (shapes, scaling, where the VAE is called), not quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, DDPMScheduler, LDMPipeline, UNet2DModel, VQModel
from PIL import Image

from difflab.diffusion.data import load_dataset
from difflab.diffusion.generate import generate
from difflab.diffusion.inversion import Edit, InversionSettings, dataset_images, edit, vae_error
from difflab.diffusion.loading import pipeline_setup, run_setup
from difflab.jobs.training import TrainingJob
from difflab.recipe import parse_with_overrides
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import Worker
from tests.conftest import TINY_DDPM, run_cli, tiny_args
from tests.test_init_from_source import hub_cache  # noqa: F401 (a fixture: an offline Hugging Face cache)
from tests.test_pipeline_export import REFUSE_DIFFLAB

SCALING = 0.5  # set in the recipe, so the pipeline must carry it rather than the VAE's default 0.18215


def tiny_vae(folder: Path, levels: int = 2) -> Path:
    """A random AutoencoderKL at the sizes diffusers' own tests use: 8 px RGB in, 4 channels out,
    halving the image levels - 1 times."""
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16)[:levels],
                  down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=8).save_pretrained(folder)
    return folder


def latent_args(vae: Path, *extra: str) -> list[str]:
    """The tiny DDPM recipe on the latents of `vae` (8 px images, 4 x 4 x 4 latents)."""
    return tiny_args(f"latent.vae='{vae}'", "sample.gif=false", "train.sample_every=0", *extra, base=TINY_DDPM)


@dataclass
class LatentRun:
    path: Path
    encoded: list[int]  # the batch size of every VAE encode call during `difflab run`


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def latent_run(vae, tmp_path_factory) -> LatentRun:
    """An unconditional latent DDPM on 64 shapes for 3 epochs, evaluated and inverted after training,
    counting the VAE's encode calls."""
    run = tmp_path_factory.mktemp("latent") / "run"
    encoded = []
    original = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):
        encoded.append(len(x))
        return original(self, x, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoencoderKL, "encode", counting)
        # evaluation and inversion after training too: they get the pixels while the model samples latents
        assert run_cli("run", "from-scratch", "--out", run, *latent_args(
            vae, f"latent.scaling_factor={SCALING}", "eval.enabled=true", "eval.num_samples=8", "invert.enabled=true",
            "invert.images=[0, 1]", "invert.steps=4")) == 0
    return LatentRun(run, encoded)


@pytest.fixture(scope="module")
def conditional_latent_run(vae, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("conditional-latent") / "run"
    assert run_cli("run", "from-scratch", "--out", run, *latent_args(vae, "model.num_classes=3", "train.epochs=1",
                                                                      "train.checkpoint_every=0")) == 0
    return run


def run_without_difflab(code: str, tmp_path: Path) -> list[str]:
    """Run `code` in a fresh interpreter that refuses to import difflab; its stdout's lines."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-I", "-c", REFUSE_DIFFLAB + code], check=False, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "no difflab"
    return lines[1:]


# ------------------------------------------------------------------ training


def test_a_latent_run_encodes_each_image_once_not_once_per_epoch(latent_run):
    summary = json.loads((latent_run.path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    # the 64 images once over 3 epochs; then the 2 inverted after training, three times (the inversion,
    # the edit, the VAE alone)
    assert sum(latent_run.encoded) == 64 + 2 * 3
    vae = json.loads((latent_run.path / "vae" / "config.json").read_text())
    assert vae["_class_name"] == "AutoencoderKL" and vae["scaling_factor"] == SCALING
    unet = json.loads((latent_run.path / "model" / "config.json").read_text())
    assert unet["in_channels"] == 4 and unet["sample_size"] == 4


def test_after_training_the_decoded_samples_are_evaluated_and_images_inverted_through_the_vae(latent_run):
    summary = json.loads((latent_run.path / "summary.json").read_text())
    assert summary["eval"]["samples"] == 8 and summary["eval"]["frechet_normalised"] is not None
    inverted = summary["invert"]
    assert inverted["images"] == 2 and inverted["vae_mse"] > 0 and inverted["mse"] > 0
    assert (latent_run.path / "inversion" / "latent-channels.png").is_file()


# ------------------------------------------------------------------ RUN/pipeline in plain diffusers

LDM_CHECKS = '''\
import json, sys
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("PIPELINE")
images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
print(json.dumps({"class": type(pipe).__name__, "vae": type(pipe.vqvae).__name__,
                  "scaling_factor": pipe.vqvae.config.scaling_factor, "clip_sample": pipe.scheduler.config.clip_sample,
                  "shape": list(images.shape), "in_range": bool(images.min() >= 0 and images.max() <= 1),
                  "difflab": [m for m in sys.modules if m.startswith("difflab")]}))
'''


def test_plain_diffusers_samples_the_latent_pipeline_without_difflab(latent_run, tmp_path):
    folder = latent_run.path / "pipeline"
    made = json.loads(run_without_difflab(LDM_CHECKS.replace("PIPELINE", str(folder)), tmp_path)[0])
    assert made["class"] == "LDMPipeline" and made["vae"] == "AutoencoderKL"
    assert made["scaling_factor"] == SCALING and made["clip_sample"] is False
    assert made["shape"] == [2, 8, 8, 3] and made["in_range"]  # decoded: 8 px images from 4 x 4 latents
    assert made["difflab"] == []


CONDITIONAL_CHECKS = '''\
import json, sys
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("PIPELINE", trust_remote_code=True)
same_noise = lambda label: pipe(class_labels=[label], guidance_scale=3.0, num_inference_steps=3,
                                generator=torch.Generator().manual_seed(1), output_type="np").images
print(json.dumps({"class": type(pipe).__name__, "vae": type(pipe.vae).__name__,
                  "shape": list(same_noise(0).shape), "classes_differ": bool(abs(same_noise(0) - same_noise(2)).max() > 1e-4),
                  "difflab": [m for m in sys.modules if m.startswith("difflab")]}))
'''


def test_plain_diffusers_samples_a_class_of_the_conditional_latent_pipeline(conditional_latent_run, tmp_path):
    folder = conditional_latent_run / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalDDPMPipeline"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    made = json.loads(run_without_difflab(CONDITIONAL_CHECKS.replace("PIPELINE", str(folder)), tmp_path)[0])
    assert made["class"] == "ClassConditionalDDPMPipeline" and made["vae"] == "AutoencoderKL"
    assert made["shape"] == [1, 8, 8, 3] and made["classes_differ"] and made["difflab"] == []


def test_the_model_card_says_it_is_a_latent_model_and_how_to_load_it(latent_run):
    _, front, body = (latent_run.path / "pipeline" / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    assert "latent-diffusion" in yaml.safe_load(front)["tags"]
    assert "denoises 4×4×4 latents of an AutoencoderKL" in body and "scaling_factor 0.5" in body
    assert f'LDMPipeline.from_pretrained("{latent_run.path / "pipeline"}")' in body


def test_difflab_export_writes_the_latent_pipeline_again(latent_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(latent_run.path, run)
    shutil.rmtree(run / "pipeline")
    assert run_cli("export", run) == 0
    index = json.loads((run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" and index["vqvae"] == ["diffusers", "AutoencoderKL"]
    assert json.loads((run / "pipeline" / "vqvae" / "config.json").read_text())["scaling_factor"] == SCALING


# ------------------------------------------------------------------ difflab sample, eval, invert, sweeps


@pytest.mark.parametrize("conditional", [False, True], ids=["ldm", "class-conditional"])
def test_a_latent_pipeline_samples_in_difflab_as_its_run_does(conditional, latent_run, conditional_latent_run):
    run = conditional_latent_run if conditional else latent_run.path
    settings = ["sample.sampler='ddim'", "sample.steps=3", "sample.seed=4",
                *(["sample.guidance_scale=2.0"] if conditional else [])]
    from_pipeline = pipeline_setup(str(run / "pipeline"), settings, "cpu")
    from_run = run_setup(run, settings, "cpu")
    assert from_pipeline.codec is not None and from_pipeline.shape == from_run.shape == (4, 4, 4)
    assert from_pipeline.codec.scaling_factor == from_run.codec.scaling_factor
    assert from_pipeline.recipe.dataset.image_size == 8 and from_pipeline.recipe.dataset.channels == 3
    images = generate(from_pipeline, 2, 3)
    assert images.shape == (2, 3, 8, 8)
    assert torch.allclose(images, generate(from_run, 2, 3), atol=1e-4)


def test_difflab_sample_takes_the_run_and_its_pipeline(latent_run, tmp_path):
    for name, source in (("run", [latent_run.path]), ("pipeline", ["--pipeline", latent_run.path / "pipeline"])):
        out = tmp_path / name
        assert run_cli("sample", *source, "--steps", "2", "--num-images", "2", "--out", out, "--device", "cpu") == 0
        with Image.open(out / "ddim-2steps-seed0-final.png") as grid:
            # two 8 px images (not 4 px latents) in a column, padded by 2, drawn at twice their size
            assert grid.mode == "RGB" and grid.size == (2 * (2 + 8 + 2), 2 * (2 + 8 + 2 + 8 + 2))


def test_sweeps_over_checkpoints_show_decoded_images(latent_run, tmp_path):
    assert run_cli("sample", latent_run.path, "--sweep", "checkpoint=all", "--steps", "2", "--num-images", "2",
                   "--out", tmp_path, "--device", "cpu") == 0
    rows = json.loads((tmp_path / "sweep-checkpoint-ddim-2steps-seed0.json").read_text())["rows"]
    assert [row["label"] for row in rows] == ["step 8", "step 12", "final"]
    assert all(len(row["mean"]) == 3 for row in rows)  # the RGB images' means, not the 4 latent channels'


def test_eval_measures_decoded_samples_against_the_pixel_dataset(latent_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(latent_run.path, run)
    assert run_cli("eval", run, "--samples", "8", "--steps", "2", "--no-inception", "--device", "cpu") == 0
    row = json.loads((run / "summary.json").read_text())["eval"]
    assert row["samples"] == 8 and row["steps"] == 2 and row["frechet_normalised"] is not None


def test_invert_goes_through_the_vae_and_measures_pixels(latent_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(latent_run.path, run)
    assert run_cli("invert", run, "--steps", "4", "--image", "0", "--image", "1", "--sweep-steps", "2",
                   "--device", "cpu") == 0
    folder = run / "inversion"
    table = json.loads((folder / "errors.json").read_text())
    assert table["images"] == 2 and 0 < table["vae_mse"] and 0 < table["mse"]
    sizes = set()
    for grid in ("originals", "inverted-noise", "reconstructions", "edits"):
        with Image.open(folder / f"{grid}.png") as picture:
            sizes.add(picture.size)
    assert len(sizes) == 1  # the latent noise drawn at the images' size, in the same grid
    with Image.open(folder / "latent-channels.png") as figure:  # image | z0 z1 z2 z3 | back, per image
        assert figure.width > figure.height


def test_an_edit_from_step_zero_is_the_vae_round_trip(latent_run):
    setup = run_setup(latent_run.path, [], "cpu")
    images, _ = dataset_images(load_dataset(setup.recipe.dataset), [0, 1, 2], "images")
    back = edit(setup, images, None, InversionSettings(4, start_step=0), Edit())
    assert back.shape == images.shape
    assert torch.allclose(back, setup.codec.decode(setup.codec.encode(images)), atol=1e-5)
    assert vae_error(setup, images).mean_mse == pytest.approx(((back - images) / 2).pow(2).mean().item(), rel=1e-4)


# ------------------------------------------------------------------ bad input: exit 2, one line


def unet_folder(folder: Path) -> Path:
    """A pixel-space UNet2DModel of the tiny DDPM recipe's shape: it takes 3-channel images."""
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case,fragment", [
    ("missing", "latent.vae = '{where}': no such folder"),
    ("unet", "describes a UNet2DModel, not an AutoencoderKL"),
    ("size", "dataset.image_size = 10: the VAE of latent.vae = '{where}' halves the image 2 times"),
    ("channels", ("train.init_from = '{init}': its network takes 3-channel input, but it would be fed the "
                  "4-channel latents")),
])
def test_bad_latent_input_is_one_line_and_exit_2(case, fragment, tmp_path, capsys):
    where, extra, init = tmp_path / "vae", [], ""
    if case == "unet":
        unet_folder(where)
    elif case == "size":
        tiny_vae(where, levels=3)
        extra = ["dataset.image_size=10"]
    elif case == "channels":
        tiny_vae(where)
        init = str(unet_folder(tmp_path / "pixel-unet"))
        extra = [f"train.init_from='{init}'"]
    assert run_cli("run", "from-scratch", "--out", tmp_path / "run", *latent_args(where, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert fragment.format(where=where, init=init) in err and "\n" not in err, err


def test_a_pipeline_whose_vqvae_is_a_vq_model_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "ldm"
    vq = VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                 norm_num_groups=8, num_vq_embeddings=16, vq_embed_dim=4,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    unet = UNet2DModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    assert run_cli("sample", "--pipeline", folder, "--steps", "2", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "its vqvae is a VQModel; difflab's latent models decode with an AutoencoderKL" in err and "\n" not in err


def test_in_the_lab_a_bad_vae_is_an_input_error_event(tmp_path):
    """The lab's screens show a job's JobError as a notification; an InputError arrives as one, exit code 2."""
    recipe = parse_with_overrides({}, [*TINY_DDPM, f"latent.vae='{tmp_path / 'no-vae'}'"], "test")
    worker = Worker("cpu")
    try:
        handle = worker.submit(TrainingJob(recipe, RunDir.create(tmp_path / "run", recipe)))
        last = list(worker.iter_events(handle.job_id))[-1]
    finally:
        worker.shutdown(timeout=30)
    assert isinstance(last, events.JobError) and last.exit_code == 2 and not last.traceback
    assert "latent.vae" in last.message and "no such folder" in last.message and "\n" not in last.message


@pytest.mark.parametrize("subfolder", ["vae", "vqvae"])
def test_a_hub_id_in_the_cache_gives_its_vae_offline(subfolder, hub_cache, tmp_path, capsys):
    """A Stable Diffusion layout (vae/) and an LDMPipeline's (vqvae/) on the hub, read from the local
    Hugging Face cache with the hub switched off; the run keeps its own copy."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--tiny-owner--latent-tiny"
    tiny_vae(repo / "snapshots" / revision / subfolder)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args(
        "latent.vae='tiny-owner/latent-tiny'", "sample.gif=false", "train.sample_every=0", base=TINY_DDPM)) == 0
    assert AutoencoderKL.from_pretrained(run / "vae").config.latent_channels == 4
    missing = tmp_path / "missing"
    assert run_cli("run", "from-scratch", "--out", missing, *tiny_args(
        "latent.vae='tiny-owner/not-cached'", base=TINY_DDPM)) == 2
    err = capsys.readouterr().err.strip()
    assert "latent.vae = 'tiny-owner/not-cached'" in err and "HF_HUB_OFFLINE" in err and "\n" not in err, err
