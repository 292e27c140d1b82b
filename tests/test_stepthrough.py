"""Stepping through sampling: one seed, two samplers, every step's x_t and predicted x0; for a
latent model, every step's latent channels beside x_t and x0 decoded through its VAE."""

from __future__ import annotations

import pytest
from PIL import Image

from difflab.errors import InputError
from difflab.jobs.stepthrough import (
    CHANNEL_SEPARATOR,
    SaveStepThroughJob,
    StepThroughJob,
    latent_grid,
    samplers_for,
)
from difflab.runtime.events import JobError, JobFinished, Progress
from difflab.runtime.runs import source_kind
from difflab.runtime.worker import Worker
from tests.conftest import TINY_DDPM, run_cli, tiny_args


@pytest.fixture(scope="module")
def trained_ddpm_run(tmp_path_factory):
    """A tiny DDPM run, trained once for the module (one epoch, no GIF). The linear schedule: Heun,
    whose model calls one test counts, cannot sample cosine-schedule models and is refused there."""
    run = tmp_path_factory.mktemp("stepthrough") / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *tiny_args(
        "train.epochs=1", "sample.gif=false", "schedule.beta_schedule='linear'", base=TINY_DDPM)) == 0
    return run


def save_tiny_vae(folder, image_size: int = 8):
    """A random-weight AutoencoderKL (4 latent channels, halving once: 8 px RGB -> 4x4x4 latents)."""
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  sample_size=image_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_latent_run(tmp_path_factory):
    """The tiny DDPM run, diffusing in a random VAE's latent space (its UNet sees 4x4x4 latents)."""
    folder = tmp_path_factory.mktemp("latent")
    vae = save_tiny_vae(folder / "vae")
    run = folder / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *tiny_args(
        "train.epochs=1", "sample.gif=false", "schedule.beta_schedule='linear'", f"latent.vae='{vae}'",
        base=TINY_DDPM)) == 0
    return run


@pytest.fixture(scope="module")
def trained_toy_run(tmp_path_factory):
    """The tiny from-scratch run: the toy schedule, which only the toy sampler can sample."""
    run = tmp_path_factory.mktemp("toy") / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args("train.epochs=1", "sample.gif=false")) == 0
    return run


def test_a_source_offers_the_samplers_that_can_sample_it(trained_toy_run, trained_ddpm_run, tmp_path):
    from difflab.recipe import SAMPLERS

    assert samplers_for(trained_toy_run) == ("toy",)
    checkpoint = max((trained_toy_run / "checkpoints").iterdir())
    assert samplers_for(checkpoint) == ("toy",)
    ddpm = samplers_for(trained_ddpm_run)
    assert "toy" not in ddpm and {"ddim", "ddpm", "dpm-solver++"} <= set(ddpm)
    assert samplers_for(trained_ddpm_run / "pipeline") == ddpm
    assert samplers_for(tmp_path / "not-a-run-yet") == SAMPLERS  # the job says what is wrong, not the list


@pytest.fixture(scope="module")
def worker():
    worker = Worker("cpu")
    yield worker
    worker.shutdown(timeout=30)


def run_job(worker, job) -> tuple[list, object]:
    handle = worker.submit(job)
    seen = list(worker.iter_events(handle.job_id))
    return seen[:-1], seen[-1]


def test_two_samplers_start_from_the_same_noise_and_part_ways(worker, trained_ddpm_run, tmp_path):
    job = StepThroughJob(trained_ddpm_run, None, ["ddim", "dpm-solver++"], steps=4, seed=3, num_images=2)
    seen, end = run_job(worker, job)
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    assert [e.step for e in seen if isinstance(e, Progress)][-1] == 8  # 4 steps for each sampler
    ddim, dpm = end.summary["samplers"]["ddim"], end.summary["samplers"]["dpm-solver++"]
    # one entry per model call: both of these call the model once a step
    assert len(ddim.inputs) == len(ddim.predictions) == len(dpm.inputs) == 4
    assert ddim.inputs[0].size == (2 * 10 + 2, 12)  # two 8 px images in one row, 2 px padding
    assert ddim.inputs[0].tobytes() == dpm.inputs[0].tobytes()  # same seed, same starting noise
    assert ddim.final.tobytes() != dpm.final.tobytes()
    assert any(a.tobytes() != b.tobytes() for a, b in zip(ddim.inputs[1:], dpm.inputs[1:]))

    seen, end = run_job(worker, SaveStepThroughJob(end.summary, tmp_path / "out"))
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    names = sorted(p.split("/")[-1] for p in end.summary["paths"])
    assert names == ["ddim-4steps-seed3.gif", "ddim-4steps-seed3.png",
                     "dpm-solver++-4steps-seed3.gif", "dpm-solver++-4steps-seed3.png"]
    with Image.open(tmp_path / "out" / "ddim-4steps-seed3.gif") as gif:
        assert gif.n_frames >= 2


def test_heun_counts_each_model_call_as_a_step(worker, trained_ddpm_run):
    seen, end = run_job(worker, StepThroughJob(trained_ddpm_run, None, ["heun"], steps=3, seed=0, num_images=1))
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    assert len(end.summary["samplers"]["heun"].inputs) == 2 * 3 - 1
    assert [e.step for e in seen if isinstance(e, Progress)][-1] == 3


def test_a_saved_pipeline_is_a_source_too(worker, trained_ddpm_run):
    pipeline = trained_ddpm_run / "pipeline"
    assert source_kind(pipeline) == "pipeline" and source_kind(trained_ddpm_run) == "run"
    job = StepThroughJob.from_path(pipeline, samplers=["ddim"], steps=2, seed=0, num_images=1)
    assert job.samples_dir.name == "samples" and job.pipeline == str(pipeline)
    _, end = run_job(worker, job)
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    assert len(end.summary["samplers"]["ddim"].inputs) == 2


def test_bad_sources_are_input_errors(worker, trained_ddpm_run, tmp_path):
    _, end = run_job(worker, StepThroughJob.from_path(tmp_path / "nowhere", samplers=["ddim"], steps=2, seed=0,
                                                      num_images=1))
    assert isinstance(end, JobError) and end.exit_code == 2 and "not a run folder" in end.message
    _, end = run_job(worker, StepThroughJob.from_path(tmp_path, samplers=["ddim"], steps=2, seed=0, num_images=1))
    assert isinstance(end, JobError) and "no model_index.json" in end.message
    _, end = run_job(worker, StepThroughJob(trained_ddpm_run, None, ["ddim", "toy"], steps=2, seed=0,
                                            num_images=1))
    assert isinstance(end, JobError) and end.exit_code == 2 and "toy" in end.message
    with pytest.raises(InputError, match="one or two"):
        StepThroughJob(trained_ddpm_run, None, [], steps=2, seed=0, num_images=1)


def test_a_checkpoint_folder_samples_like_its_run(worker, trained_ddpm_run):
    checkpoint = max((trained_ddpm_run / "checkpoints").iterdir())
    job = StepThroughJob.from_path(checkpoint, samplers=["ddim"], steps=2, seed=5, num_images=2)
    assert source_kind(checkpoint) == "checkpoint" and job.samples_dir == trained_ddpm_run / "samples"
    _, from_checkpoint = run_job(worker, job)
    _, from_run = run_job(worker, StepThroughJob(trained_ddpm_run, None, ["ddim"], steps=2, seed=5, num_images=2))
    assert isinstance(from_checkpoint, JobFinished), getattr(from_checkpoint, "message", from_checkpoint)
    # the last checkpoint is the end of training, so the same weights: the same images
    finals = [e.summary["samplers"]["ddim"].final.tobytes() for e in (from_checkpoint, from_run)]
    assert finals[0] == finals[1]


def test_a_latent_run_shows_each_steps_latent_channels_beside_x_t_and_x0_decoded(worker, trained_latent_run,
                                                                                 tmp_path):
    from difflab.screens.picture import grid_tiles

    job = StepThroughJob(trained_latent_run, None, ["ddim", "dpm-solver++"], steps=3, seed=1, num_images=2)
    _, end = run_job(worker, job)
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    for steps in end.summary["samplers"].values():
        assert len(steps.latents) == len(steps.inputs) == len(steps.predictions) == 3
        assert steps.latent_channels == 4
        # x_t and x0 decoded: two 8 px RGB images a step, as a pixel run's (2 px padding)
        assert {grid.size for grid in steps.inputs + steps.predictions} == {(2 * 10 + 2, 12)}
        assert steps.trajectory.inputs[0].shape == (2, 3, 8, 8)  # what the GIF draws: pixels
        for grid in steps.latents:  # per image a 2x2 block of its 4x4 channels, 1 px between them
            blocks = grid_tiles(grid)
            assert [block.size for block in blocks] == [(9, 9), (9, 9)]
            assert blocks[0].getpixel((4, 0)) == tuple(round(255 * c) for c in CHANNEL_SEPARATOR)
    ddim, dpm = end.summary["samplers"]["ddim"], end.summary["samplers"]["dpm-solver++"]
    assert ddim.latents[0].tobytes() == dpm.latents[0].tobytes()  # one seed, one starting latent
    assert ddim.inputs[-1].tobytes() != ddim.inputs[0].tobytes()

    _, end = run_job(worker, SaveStepThroughJob(end.summary, tmp_path / "out"))
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    with Image.open(tmp_path / "out" / "ddim-3steps-seed1.gif") as gif:
        assert gif.size == (2 * 22, 2 * 22)  # x_t over x0, two 8 px images a row (2 px padding), drawn 2x


def test_a_pixel_run_has_no_latent_pictures(worker, trained_ddpm_run):
    _, end = run_job(worker, StepThroughJob(trained_ddpm_run, None, ["ddim"], steps=2, seed=0, num_images=1))
    assert isinstance(end, JobFinished), getattr(end, "message", end)
    steps = end.summary["samplers"]["ddim"]
    assert steps.latents is None and steps.latent_channels == 0


def test_a_latent_grid_keeps_each_images_channels_together():
    import torch

    from difflab.screens.picture import grid_tiles

    latents = torch.zeros(3, 4, 2, 2)
    latents[1, 2] = 3.0  # image 1, channel 2 (bottom left of its block): white; the rest mid-grey
    grid = latent_grid(latents, nrow=3)
    blocks = grid_tiles(grid)
    assert len(blocks) == 3 and {b.size for b in blocks} == {(5, 5)}
    assert blocks[1].getpixel((0, 3)) == (255, 255, 255) and blocks[0].getpixel((0, 3)) == (127, 127, 127)
    assert blocks[1].getpixel((2, 2)) == tuple(round(255 * c) for c in CHANNEL_SEPARATOR)
