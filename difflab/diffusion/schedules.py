"""Corruption processes: how a clean image becomes a noisy one for training.

The from-scratch chapter's toy process mixes the image linearly with uniform
noise: amount 0 leaves the image, amount 1 gives pure noise. The DDPM process
(chapter 4) is diffusers' DDPMScheduler: Gaussian noise over T timesteps,
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I). Its curves, targets
and loss weights are read from that scheduler, never re-derived, so what the lab
shows is what training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from difflab.errors import InputError
from difflab.recipe import OBJECTIVES, Recipe, ScheduleConfig

if TYPE_CHECKING:  # diffusers takes seconds to import and the toy chapter never needs it
    from diffusers import DDPMScheduler


def corrupt(x: torch.Tensor, amount: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The course's toy corruption: x*(1-amount) + noise*amount, one amount per image."""
    if noise is None:
        noise = torch.rand_like(x)  # the course uses uniform noise in 0..1, not Gaussian
    amount = amount.view(-1, *([1] * (x.dim() - 1)))
    return x * (1 - amount) + noise * amount


def prediction_type_for(objective: str) -> str:
    """diffusers' name for a recipe objective (the registry's: x0 is "sample"); a diffusers name passes through."""
    return OBJECTIVES[objective].prediction_type if objective in OBJECTIVES else objective


def noise_scheduler(cfg: ScheduleConfig, prediction_type: str = "epsilon") -> DDPMScheduler:
    """The DDPMScheduler of a schedule section: the training-time noise schedule and its maths."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                         prediction_type=prediction_type_for(prediction_type))


def training_noise_scheduler(recipe: Recipe) -> DDPMScheduler | None:
    """The scheduler a recipe's model trains (and samples) with; None for the toy process."""
    if recipe.schedule.kind != "ddpm":
        return None
    scheduler = noise_scheduler(recipe.schedule, recipe.train.objective)
    if recipe.latent.vae:  # latents are not confined to -1..1 as pixels are: never clip them
        scheduler.register_to_config(clip_sample=False)
    return scheduler


@dataclass
class ScheduleCurves:
    """A DDPM schedule per timestep t = 0..T-1, as 1-D float64 tensors (for plots and tables)."""

    timesteps: torch.Tensor
    betas: torch.Tensor
    alpha_bar: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    snr: torch.Tensor
    log_snr: torch.Tensor


def schedule_curves(cfg: ScheduleConfig) -> ScheduleCurves:
    """The curves of a schedule, read from the diffusers scheduler that training uses."""
    scheduler = noise_scheduler(cfg)
    # float64 from diffusers' own float32 values: the curves show exactly what training sees
    alpha_bar = scheduler.alphas_cumprod.double()
    snr = alpha_bar / (1 - alpha_bar)
    return ScheduleCurves(
        timesteps=torch.arange(cfg.num_train_timesteps), betas=scheduler.betas.double(), alpha_bar=alpha_bar,
        sqrt_alpha_bar=alpha_bar.sqrt(), sqrt_one_minus_alpha_bar=(1 - alpha_bar).sqrt(), snr=snr,
        log_snr=snr.log())


def noised_strip(image: torch.Tensor, cfg: ScheduleConfig, timesteps: list[int], seed: int = 0,
                 value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """One image (C, H, W) noised to each of `timesteps`, the same noise throughout: (len(timesteps), C, H, W).

    A toy schedule reads t as the amount t/(T-1), so toy and DDPM strips line up side by side.
    """
    _check_timesteps(timesteps, cfg.num_train_timesteps)
    images = image.unsqueeze(0).expand(len(timesteps), *image.shape)
    generator = torch.Generator().manual_seed(seed)
    t = torch.tensor(timesteps, dtype=torch.long)
    if cfg.kind == "toy":
        low, high = value_range  # the toy process's uniform noise spans the data's range
        noise = torch.rand(image.shape, generator=generator, dtype=image.dtype) * (high - low) + low
        return corrupt(images, t.to(image.dtype) / (cfg.num_train_timesteps - 1), noise.to(image.device))
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
    return add_noise(noise_scheduler(cfg), images, noise.expand_as(images), t.to(image.device))


def _check_timesteps(timesteps: list[int], total: int) -> None:
    bad = [t for t in timesteps if not 0 <= t < total]
    if bad:
        raise InputError(f"timesteps {bad}: must lie in 0..{total - 1} (schedule.num_train_timesteps = {total})")


def add_noise(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, one timestep per image."""
    return scheduler.add_noise(x0, noise, timesteps)


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor, objective: str) -> torch.Tensor:
    """What the model should output for an objective: the noise, the clean image, or v."""
    kind = prediction_type_for(objective)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"objective {objective!r}: expected one of 'epsilon', 'x0', 'v_prediction'")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float,
                    objective: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), one per image, as diffusers' training scripts apply them."""
    snr = compute_snr(scheduler, timesteps)
    weights = snr.clamp(max=gamma)  # min(SNR, gamma) is the weight of an x0 loss
    kind = prediction_type_for(objective)
    # an epsilon (or v) loss already carries a factor SNR (or SNR+1) of the x0 loss, so divide it out
    if kind == "epsilon":
        return weights / snr
    if kind == "v_prediction":
        return weights / (snr + 1)
    return weights
