"""Every diffusers sampler through difflab's one loop, checked against an oracle model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from difflab.diffusion.animate import denoising_gif, frame_indices
from difflab.diffusion.samplers import (
    SCHEDULER_CLASSES,
    diffusers_sample,
    sample_trajectory,
    sampler_scheduler,
    timestep_alpha_bars,
)
from difflab.diffusion.schedules import noise_scheduler
from difflab.errors import InputError
from difflab.recipe import SAMPLERS, ScheduleConfig

# diffusers' own numpy-2 deprecation noise from inside its schedulers' set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DDPM = ScheduleConfig(kind="ddpm")
STOCHASTIC = {"ddpm", "euler-ancestral"}
UNSUPPORTED = {("pndm", "sample"), ("euler-ancestral", "sample")}  # diffusers has no such step
SUPPORTED = [(name, kind) for name in SCHEDULER_CLASSES for kind in ("epsilon", "sample", "v_prediction")
             if (name, kind) not in UNSUPPORTED]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 8 px tensors gain nothing from a second intra-op thread; with another busy process on a
    # 2-core box its barrier waits made each tiny UNet call ~1 s instead of ~6 ms
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       norm_num_groups=8, layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def unet_fn(unet: UNet2DModel):
    return lambda x, t: unet(x, t).sample


def gaussian(seed: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_the_samplers_are_the_recipes():
    assert list(SCHEDULER_CLASSES) == list(SAMPLERS[1:])  # every sampler but the toy one


@pytest.mark.parametrize("name", list(SCHEDULER_CLASSES))
def test_every_sampler_samples_a_unet2d(name, tiny_unet):
    scheduler = sampler_scheduler(name, noise_scheduler(DDPM))
    out = diffusers_sample(unet_fn(tiny_unet), scheduler, gaussian(0), steps=3,
                           generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 1, 8, 8)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- the oracle


def the_image() -> torch.Tensor:
    """The whole dataset: one known (1, 1, 8, 8) image in -0.9..0.9."""
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(42)) * 1.8 - 0.9


def oracle(x0: torch.Tensor, train: DDPMScheduler, calls: list):
    """The perfect model for a dataset of one image: the exact target for (x_t, t).

    alpha_bar at a fractional t is the training schedule's, interpolated in sigma as
    diffusers' Euler-type samplers do.
    """
    alpha_bar = train.alphas_cumprod.double()
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt().numpy()
    prediction_type = train.config.prediction_type

    def model_fn(x, t):
        calls.append(float(t))
        sigma = np.interp(float(t), np.arange(len(sigmas)), sigmas)
        ab = 1 / (1 + sigma**2)
        eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "sample":
            return x0.expand_as(x)
        return ab**0.5 * eps - (1 - ab) ** 0.5 * x0  # v

    return model_fn


def model_calls(name: str, steps: int) -> int:
    # Heun evaluates twice a step but the first; PNDM (PLMS) once more at the start
    return {"heun": 2 * steps - 1, "pndm": steps + 1}.get(name, steps)


@pytest.mark.parametrize(("name", "prediction_type"), SUPPORTED)
def test_with_a_perfect_model_every_sampler_lands_on_the_image(name, prediction_type):
    x0, steps, calls, seen = the_image(), 25, [], []
    train = noise_scheduler(DDPM, prediction_type)
    scheduler = sampler_scheduler(name, train)
    noise = gaussian(1, 4)
    out = diffusers_sample(oracle(x0, train, calls), scheduler, noise, steps,
                           generator=torch.Generator().manual_seed(2), callback=seen.append)
    # the model first sees the starting noise at unit variance, as in training (whatever sigma
    # the sampler itself works at)
    assert torch.allclose(seen[0].x, noise, atol=1e-3)
    # PNDM stops at alpha_bar_0 = 1 - beta_0 (its set_alpha_to_one=False), noise std 0.01 left
    assert (out - x0).abs().max() < (0.05 if name == "pndm" else 1e-4)
    assert len(calls) == len(seen) == model_calls(name, steps)
    assert [s.index for s in seen] == list(range(len(seen)))
    assert all(s.total == len(seen) for s in seen)
    for step in seen:  # the predicted x0 is the image at every step, from the first
        assert torch.allclose(step.prediction, x0.expand_as(step.prediction), atol=1e-4), step.index


@pytest.mark.parametrize("name", sorted(STOCHASTIC) + ["ddim"])
def test_stochastic_samplers_differ_by_generator_yet_land_on_the_image(name):
    x0, train = the_image(), noise_scheduler(DDPM)
    scheduler = sampler_scheduler(name, train)
    paths = []
    for seed in (5, 6):
        seen = []
        out = diffusers_sample(oracle(x0, train, []), scheduler, gaussian(1), 20, eta=1.0,
                               generator=torch.Generator().manual_seed(seed), callback=seen.append)
        assert (out - x0).abs().max() < 1e-4
        paths.append(seen[len(seen) // 2].x)
    assert not torch.allclose(paths[0], paths[1])  # mid-way the two runs took different routes


# ---------------------------------------------------------------- the cosine schedule

COSINE = ScheduleConfig(kind="ddpm", beta_schedule="squaredcos_cap_v2")


def guided_oracle(images: torch.Tensor, train: DDPMScheduler, scale: float):
    """The perfect model of a two-image dataset, conditioned on the first with guidance `scale`.

    Unconditional: the posterior mean of x0 over both images; conditional: the first image;
    guided: uncond + scale * (cond - uncond), as classifier-free guidance mixes the two. At high
    noise the posterior is even, so the guided x0 is 2A - B at scale 3, partly outside -1..1.
    alpha_bar at a fractional t is interpolated in sigma, as in `oracle`.
    """
    alpha_bar, batch = train.alphas_cumprod.double(), images.unsqueeze(0)
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt().numpy()

    def model_fn(x, t):
        sigma = np.interp(float(t), np.arange(len(sigmas)), sigmas)
        ab = 1 / (1 + sigma**2)
        a, s = ab**0.5, (1 - ab) ** 0.5
        distance = ((x.unsqueeze(1) - a * batch).flatten(2) ** 2).sum(-1) / (2 * s * s)
        weights = torch.softmax(-distance, dim=1).view(len(x), len(images), 1, 1, 1)
        uncond = (weights * batch).sum(1)
        return (x - a * (uncond + scale * (images[0] - uncond))) / s

    return model_fn


COSINE_SAMPLERS = ["ddim", "ddpm", "dpm-solver++", "euler", "euler-ancestral", "lms", "pndm", "unipc"]
# PNDM's 4-step extrapolation misses this oracle at 10 steps on either schedule (0.78 from the image on
# the linear one, 0.50 on the cosine one), so it is checked from 50
COSINE_ORACLE = [(name, steps) for name in COSINE_SAMPLERS for steps in (10, 50, 100) if (name, steps) != ("pndm", 10)]


@pytest.mark.parametrize(("name", "steps"), COSINE_ORACLE)
def test_on_the_cosine_schedule_guided_sampling_lands_on_the_asked_for_image_at_any_step_count(name, steps):
    # DDIM used to clip x0 but keep the model's eps beside it: from 50 steps on it landed 0.47
    # from the image (the digits model's FD norm. rose from 0.23 at 10 steps to 0.73 at 50).
    # A perfect model makes no error for a clip to catch: Euler, LMS and PNDM landed without the
    # loop's clip too; the untrained UNet below is what they need it for
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(42)) * 1.8 - 0.9
    train = noise_scheduler(COSINE)
    out = diffusers_sample(guided_oracle(images, train, 3.0), sampler_scheduler(name, train),
                           gaussian(1, 8), steps, generator=torch.Generator().manual_seed(2))
    # PNDM stops at alpha_bar_0 = 1 - beta_0 (as in the linear test), noise std 0.006 left
    assert (out - images[0]).abs().max() < (0.05 if name == "pndm" else 1e-3)


def test_on_the_cosine_schedule_heun_is_refused():
    # it clips x0 in its own step, yet its second-order step from sigma = 20,291 overshoots: on the
    # digits model FD norm. 0.77 / 0.73 / 0.62 at 10 / 20 / 50 steps
    with pytest.raises(InputError, match=r"sampler 'heun'.*schedule.beta_schedule = 'squaredcos_cap_v2'.*"
                                         r"use one of: ddpm, ddim, pndm, dpm-solver\+\+, euler, euler-ancestral, lms, unipc$"):
        sampler_scheduler("heun", noise_scheduler(COSINE))
    sampler_scheduler("heun", noise_scheduler(DDPM))  # the linear schedule's sigma_max is 157: offered


@pytest.mark.parametrize("name", ["dpm-solver++", "euler", "lms", "pndm", "unipc"])
def test_on_the_cosine_schedule_the_deterministic_samplers_and_ddim_solve_the_same_ode(name, tiny_unet):
    # an untrained UNet stands for a model's errors: at t = 999 sqrt(alpha_bar) is 5e-5, so
    # DPM-Solver++ without clipping x0 (and without lambda_min_clipped) ended near 1e5, and Euler
    # and LMS, before the loop clipped x0 for them, near 8e4 (PNDM 119)
    train, noise = noise_scheduler(COSINE), gaussian(1)
    ddim = diffusers_sample(unet_fn(tiny_unet), sampler_scheduler("ddim", train), noise, 50)
    other = diffusers_sample(unet_fn(tiny_unet), sampler_scheduler(name, train), noise, 50)
    assert (other - ddim).abs().mean() < 0.05
    assert other.abs().max() < 1.5


@pytest.mark.parametrize("name", COSINE_SAMPLERS)
def test_on_the_cosine_schedule_an_imperfect_models_samples_stay_in_range(name, tiny_unet):
    train = noise_scheduler(COSINE)
    out = diffusers_sample(unet_fn(tiny_unet), sampler_scheduler(name, train), gaussian(1), 10,
                           generator=torch.Generator().manual_seed(2))
    assert out.abs().max() < 1.5  # without the loop's clip: 8e4 for the Euler type, 23 for PNDM


def test_sampler_schedulers_clip_x0_as_the_training_scheduler_does():
    train = noise_scheduler(COSINE)
    assert train.config.clip_sample and train.config.clip_sample_range == 1.0  # diffusers' DDPM default
    assert sampler_scheduler("ddim", train).config.clip_sample
    # Heun clips in its step; for Euler, Euler-ancestral, LMS and PNDM the loop clips, from their config
    for name in ("heun", "euler", "euler-ancestral", "lms", "pndm"):
        config = sampler_scheduler(name, noise_scheduler(DDPM)).config
        assert config.clip_sample and config.clip_sample_range == 1.0, name
    for name in ("dpm-solver++", "unipc"):
        config = sampler_scheduler(name, train).config
        assert config.thresholding and config.sample_max_value == 1.0, name
    assert sampler_scheduler("dpm-solver++", train).config.lambda_min_clipped == -5.1
    # the linear schedule's log-SNR never falls below -5.1: its timesteps are unchanged
    linear = sampler_scheduler("dpm-solver++", noise_scheduler(DDPM))
    linear.set_timesteps(10)
    assert int(linear.timesteps[0]) == 999


def test_sampler_schedulers_keep_the_training_betas():
    # a scheduler built with diffusers' defaults records them as defaults, which from_config
    # would replace by each class's own (Heun's are Stable Diffusion's 0.00085..0.012)
    for train in (DDPMScheduler(), noise_scheduler(ScheduleConfig(kind="ddpm", num_train_timesteps=500,
                                                                   beta_schedule="squaredcos_cap_v2"), "v_prediction")):
        for name in SCHEDULER_CLASSES:
            if name == "heun" and train.config.beta_schedule != "linear":
                continue  # refused on the cosine schedule (test above)
            scheduler = sampler_scheduler(name, train)
            assert torch.equal(scheduler.alphas_cumprod, train.alphas_cumprod), name
            assert scheduler.config.prediction_type == train.config.prediction_type


def test_alpha_bars_of_whole_timesteps_are_the_schedules():
    train = noise_scheduler(DDPM)
    scheduler = sampler_scheduler("ddim", train)
    scheduler.set_timesteps(10)
    expected = train.alphas_cumprod[scheduler.timesteps].double()
    assert np.allclose(timestep_alpha_bars(scheduler), expected.numpy(), rtol=1e-6)


# ---------------------------------------------------------------- choosing and running


def test_an_unknown_sampler_names_the_valid_ones():
    with pytest.raises(InputError) as error:
        sampler_scheduler("dpm++2m", noise_scheduler(DDPM))
    assert "'dpm++2m'" in str(error.value)
    assert all(name in str(error.value) for name in SCHEDULER_CLASSES)


@pytest.mark.parametrize("name", sorted({name for name, _ in UNSUPPORTED}))
def test_unsupported_prediction_types_are_refused(name):
    with pytest.raises(InputError, match=r"train.objective = 'x0'.*use one of: ddpm, ddim, dpm-solver\+\+"):
        sampler_scheduler(name, noise_scheduler(DDPM, "x0"))


def test_ddim_with_eta_0_is_deterministic_and_eta_1_follows_the_generator(tiny_unet):
    scheduler = sampler_scheduler("ddim", noise_scheduler(DDPM))
    model, noise = unet_fn(tiny_unet), gaussian(3)

    def run(eta, seed):
        return diffusers_sample(model, scheduler, noise, 5, eta=eta, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert torch.equal(run(1.0, 1), run(1.0, 1))
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))


def test_a_trajectory_keeps_every_model_call_on_the_cpu(tiny_unet):
    train = noise_scheduler(DDPM)
    model, noise = unet_fn(tiny_unet), gaussian(4)
    path = sample_trajectory(model, sampler_scheduler("heun", train), noise, 4)
    assert len(path.inputs) == len(path.predictions) == 7
    assert all(x.device.type == "cpu" and x.shape == (2, 1, 8, 8) for x in path.inputs + path.predictions)
    assert torch.equal(path.final, diffusers_sample(model, sampler_scheduler("heun", train), noise, 4))


# ---------------------------------------------------------------- the GIF


def test_frames_are_spread_evenly_and_end_on_the_last_step():
    assert frame_indices(5, 60) == [0, 1, 2, 3, 4]
    assert frame_indices(100, 5) == [0, 25, 50, 74, 99]
    assert frame_indices(100, 1) == [99]


def test_the_denoising_gif_has_one_frame_per_picked_step(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(3, 1, 8, 8, generator=generator) for _ in range(10)]
    predictions = [torch.rand(3, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(10)]
    path = denoising_gif(inputs, predictions, (-1.0, 1.0), tmp_path / "out" / "denoising.gif",
                         max_frames=4, frame_ms=50)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        # 3 images of 8 px, upscaled 2x, two rows (x_t above, x0 below), make_grid's 2 px padding
        assert gif.size == (2 * (3 * 10 + 2), 2 * (2 * 10 + 2))
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations[:3] == [50, 50, 50] and durations[3] > 50  # the result stays up longer
