"""The DDPM schedule as chapter 2 explains it: curves, noising, targets and Min-SNR weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from difflab.diffusion.schedules import (
    min_snr_weights,
    noise_scheduler,
    noised_strip,
    prediction_type_for,
    schedule_curves,
    training_target,
)
from difflab.errors import InputError
from difflab.recipe import ScheduleConfig

DDPM = ScheduleConfig(kind="ddpm")


def test_the_default_schedule_is_the_ddpm_papers_linear_one():
    curves = schedule_curves(DDPM)
    assert len(curves.betas) == 1000
    assert curves.betas[0].item() == pytest.approx(1e-4)
    assert curves.betas[-1].item() == pytest.approx(0.02)
    assert torch.equal(curves.timesteps, torch.arange(1000))


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_curves_are_diffusers_own_values(beta_schedule):
    cfg = ScheduleConfig(kind="ddpm", num_train_timesteps=500, beta_schedule=beta_schedule)
    curves = schedule_curves(cfg)
    reference = DDPMScheduler(num_train_timesteps=500, beta_schedule=beta_schedule)
    assert torch.equal(curves.alpha_bar, reference.alphas_cumprod.double())
    assert torch.equal(curves.betas, reference.betas.double())
    assert all(c.dtype == torch.float64 and c.shape == (500,) for c in (
        curves.betas, curves.alpha_bar, curves.sqrt_alpha_bar, curves.sqrt_one_minus_alpha_bar,
        curves.snr, curves.log_snr))


def test_signal_falls_from_one_to_nearly_nothing_and_the_two_amplitudes_stay_on_the_unit_circle():
    curves = schedule_curves(DDPM)
    signal, noise = curves.sqrt_alpha_bar, curves.sqrt_one_minus_alpha_bar
    assert signal[0] > 0.999 and signal[-1] < 0.01
    assert (signal.diff() < 0).all()
    assert torch.allclose(signal**2 + noise**2, torch.ones(1000, dtype=torch.float64), atol=1e-12)


def test_snr_is_signal_over_noise_power_and_falls_with_t():
    curves = schedule_curves(DDPM)
    assert torch.allclose(curves.snr, curves.alpha_bar / (1 - curves.alpha_bar))
    assert torch.allclose(curves.log_snr, curves.snr.log())
    assert (curves.log_snr.diff() < 0).all()


def test_cosine_keeps_more_signal_at_mid_timesteps_than_linear():
    linear = schedule_curves(DDPM).sqrt_alpha_bar
    cosine = schedule_curves(ScheduleConfig(kind="ddpm", beta_schedule="squaredcos_cap_v2")).sqrt_alpha_bar
    for t in (250, 500, 750):
        assert cosine[t] > linear[t] + 0.1, t


def test_too_little_noise_leaves_the_image_visible_at_the_last_timestep():
    # the course's warning: beta 0.001 -> 0.004 never reaches pure noise, so sampling from
    # pure noise starts somewhere training never went
    weak = schedule_curves(ScheduleConfig(kind="ddpm", beta_start=0.001, beta_end=0.004))
    default = schedule_curves(DDPM)
    assert weak.sqrt_alpha_bar[-1] > 0.2
    assert default.sqrt_alpha_bar[-1] < 0.01


# ---------------------------------------------------------------- noised strips


def smooth_image(size: int = 32) -> torch.Tensor:
    """A (1, size, size) gradient in -0.9..0.9: far from noise, easy to recognise."""
    ramp = torch.linspace(-0.9, 0.9, size)
    return (ramp.view(1, -1, 1) * ramp.view(1, 1, -1)).clone()


def test_ddpm_strip_goes_from_the_image_to_noise_with_one_noise_draw():
    image = smooth_image()
    timesteps = [0, 100, 400, 999]
    strip = noised_strip(image, DDPM, timesteps, seed=3)
    assert strip.shape == (4, 1, 32, 32)
    assert (strip[0] - image).abs().max() < 0.05
    last = strip[-1].flatten()
    assert 0.8 < last.std() < 1.2  # Gaussian noise of unit variance ...
    assert abs(torch.corrcoef(torch.stack([last, image.flatten()]))[0, 1]) < 0.1  # ... with no image left
    alpha_bar = schedule_curves(DDPM).alpha_bar.float()
    # undo each row's noising: every row must have used the same noise
    noises = [(row - alpha_bar[t].sqrt() * image) / (1 - alpha_bar[t]).sqrt() for row, t in zip(strip, timesteps)]
    for noise in noises[1:]:
        assert torch.allclose(noise, noises[-1], atol=1e-3)


def test_a_strip_is_reproducible_from_its_seed():
    image = smooth_image(8)
    assert torch.equal(noised_strip(image, DDPM, [500], seed=1), noised_strip(image, DDPM, [500], seed=1))
    assert not torch.equal(noised_strip(image, DDPM, [500], seed=1), noised_strip(image, DDPM, [500], seed=2))


def test_toy_strip_reads_timesteps_as_amounts():
    image = smooth_image(8)
    toy = ScheduleConfig(kind="toy", num_train_timesteps=11)
    strip = noised_strip(image, toy, [0, 5, 10], value_range=(-1.0, 1.0))
    assert torch.equal(strip[0], image)  # amount 0: untouched
    noise = strip[2]  # amount 1: pure uniform noise over the data range
    assert noise.min() >= -1 and noise.max() <= 1 and noise.std() > 0.3
    assert torch.allclose(strip[1], 0.5 * image + 0.5 * noise)


def test_a_timestep_outside_the_schedule_is_refused():
    with pytest.raises(InputError, match=r"\[1000\].*0\.\.999"):
        noised_strip(smooth_image(8), DDPM, [0, 1000])


# ---------------------------------------------------------------- training


def test_objective_names_map_to_diffusers_prediction_types():
    assert prediction_type_for("x0") == "sample"
    assert prediction_type_for("epsilon") == "epsilon"
    assert prediction_type_for("v_prediction") == "v_prediction"
    assert noise_scheduler(DDPM, "x0").config.prediction_type == "sample"
    assert noise_scheduler(DDPM, "v_prediction").config.prediction_type == "v_prediction"


def test_training_targets_per_objective():
    scheduler = noise_scheduler(DDPM)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=generator), torch.randn(4, 1, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    assert training_target(scheduler, x0, noise, t, "epsilon") is noise
    assert training_target(scheduler, x0, noise, t, "x0") is x0
    v = training_target(scheduler, x0, noise, t, "v_prediction")
    assert torch.equal(v, scheduler.get_velocity(x0, noise, t))
    a, s = scheduler.alphas_cumprod[500].sqrt(), (1 - scheduler.alphas_cumprod[500]).sqrt()
    assert torch.allclose(v[2], a * noise[2] - s * x0[2], atol=1e-6)  # v = sqrt(ab) eps - sqrt(1-ab) x0
    with pytest.raises(ValueError, match="objective 'noise'"):
        training_target(scheduler, x0, noise, t, "noise")


def test_min_snr_weights_cap_the_easy_low_noise_timesteps():
    scheduler, gamma = noise_scheduler(DDPM), 5.0
    t = torch.arange(0, 1000, 37)
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    eps = min_snr_weights(scheduler, t, gamma, "epsilon")
    x0 = min_snr_weights(scheduler, t, gamma, "x0")
    v = min_snr_weights(scheduler, t, gamma, "v_prediction")
    assert eps.shape == (len(t),)
    assert (eps <= 1 + 1e-6).all()
    assert torch.allclose(eps[snr < gamma], torch.ones_like(eps[snr < gamma]))  # noisy steps keep full weight
    assert torch.allclose(eps[snr > gamma], gamma / snr[snr > gamma], rtol=1e-4)
    assert (x0 <= gamma).all() and x0[0] == gamma
    assert torch.allclose(v, x0 / (snr + 1), rtol=1e-4)
    assert (v < 1).all()
