"""Sampling with any diffusers scheduler: one loop, one per-step hook.

A sampler is a diffusers scheduler built from the training scheduler's config, so
the betas, the prediction type and the clipping of the predicted x0 carry over (the
course swaps DDPM for DDIM the same way). The loop is the one every diffusers pipeline runs (scale the input,
call the model, step), plus a callback that sees each model input and the clean
image the model predicts from it: the step-by-step view, the trajectory figure
and the GIF all hang off that one hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from difflab.diffusion.guidance import LossGuidance
from difflab.diffusion.sample import SampleStep, StepCallback, Trajectory
from difflab.errors import InputError
from difflab.recipe import SAMPLERS_NEEDING_LOW_SIGMA_MAX

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""model_fn(x_scaled, t) -> the model's output (noise, clean image or v), e.g. lambda x, t: unet(x, t).sample"""

SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm-solver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}

# PNDM's Runge-Kutta warm-up costs 8 extra model calls (34 for 25 steps); DDPM-trained pipelines skip it.
_OPTIONS: dict[str, dict] = {"pndm": {"skip_prk_steps": True}, "dpm-solver++": {"algorithm_type": "dpmsolver++"}}

# What defines the process the model learned. Passed explicitly because from_config drops every
# key the training scheduler left at its default (`_use_default_values`) in favour of the new
# class's own default, and Heun's are Stable Diffusion's betas (0.00085..0.012), not DDPM's.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type")

# DDPM's training config clips the predicted x0 to -1..1 (clip_sample, diffusers' default), and
# with the cosine schedule that clip carries the sampler: at t near T, sqrt(alpha_bar) is 5e-5, so
# x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) turns a small error in eps into thousands.
# DDPM's step clips and uses the clipped x0 throughout. DDIM clips x0 but by default keeps the
# model's own eps beside it (use_clipped_model_output=False), an x_{t-1} matching neither; measured
# on the digits model (cosine, CFG 3), FD norm. rose from 0.23 at 10 steps to 0.73 at 50.
# DPM-Solver++ and UniPC have no clip_sample; their thresholding with sample_max_value =
# clip_sample_range is the same clip. lambda_min_clipped = -5.1 is diffusers' setting for cosine
# (as DeepFloyd IF's scheduler config has it): it skips the last few timesteps, whose log-SNR
# is below -5.1; a linear schedule's never is (-5.06 at t = 999).
_CLIPPED_X0 = {"dpm-solver++", "unipc"}
# Euler, Euler-ancestral, LMS and PNDM have no clip of x0 in diffusers 0.42 (Heun has clip_sample):
# for them the loop clips it and hands the step the output that predicts the clipped x0, as DDIM's
# use_clipped_model_output does. The clip is kept in their config, where DDIM and Heun keep theirs.
_CLIPPED_BY_THE_LOOP = {"euler", "euler-ancestral", "lms", "pndm"}
_LAMBDA_MIN_CLIPPED = -5.1

# Prediction types diffusers 0.42 has not implemented for a sampler (its step() raises mid-run).
_UNSUPPORTED: dict[str, set[str]] = {"pndm": {"sample"}, "euler-ancestral": {"sample"}}

# The Euler-type samplers work in sigma = sqrt((1 - alpha_bar) / alpha_bar) from the schedule's last
# one: 157 on the linear schedule, 20,291 on the cosine one (its beta capped at 0.999 drops alpha_bar
# 1000x in the last step). With no clip of x0 an eps error there is multiplied by 20,291: on the
# digits model (cosine, CFG 3) they sampled noise, FD norm. 0.96-1.28, and PNDM 0.52 at 50 steps; with
# the loop's clip Euler, Euler-ancestral, LMS and PNDM sample it as DDIM does (0.08-0.11 at 10-50 steps).
# Heun clips x0 in its own step, yet its second-order step from 20,291 overshoots: 0.62-0.77 at
# 10-50 steps. Where sigma_max is far beyond EDM's 80 it is refused.
_EDM_SIGMA_MAX = 80.0


def sampler_scheduler(name: str, train_scheduler: SchedulerMixin) -> SchedulerMixin:
    """The named sampler, configured from the training scheduler (same betas, same prediction type)."""
    cls = SCHEDULER_CLASSES.get(name)
    if cls is None:
        raise InputError(f"sampler {name!r} is not a diffusers sampler; valid samplers: "
                         f"{', '.join(SCHEDULER_CLASSES)}")
    prediction_type = train_scheduler.config.prediction_type
    if prediction_type in _UNSUPPORTED.get(name, ()):
        usable = [n for n in SCHEDULER_CLASSES if prediction_type not in _UNSUPPORTED.get(n, ())]
        objective = "x0" if prediction_type == "sample" else prediction_type
        raise InputError(f"sampler {name!r} cannot sample a model trained with train.objective = "
                         f"{objective!r} (diffusers has no {prediction_type!r} step for it); "
                         f"use one of: {', '.join(usable)}")
    refusal = schedule_refusal(name, train_scheduler)
    if refusal is not None:
        raise InputError(f"sampler {name!r} {refusal}")
    scheduler = cls.from_config(train_scheduler.config, **schedule_config(train_scheduler), **_OPTIONS.get(name, {}),
                                **_clip_options(name, train_scheduler))
    if name in _CLIPPED_BY_THE_LOOP:
        config = train_scheduler.config
        scheduler.register_to_config(clip_sample=config.get("clip_sample", False),
                                     clip_sample_range=config.get("clip_sample_range", 1.0))
    return scheduler


def schedule_refusal(name: str, train_scheduler: SchedulerMixin) -> str | None:
    """Why the named sampler cannot sample this training schedule, or None where it can.

    The one rule both sampler_scheduler and the recipe check (sample.sampler) apply.
    """
    sigma_max = schedule_sigma_max(train_scheduler)
    if name not in SAMPLERS_NEEDING_LOW_SIGMA_MAX or sigma_max <= 10 * _EDM_SIGMA_MAX:
        return None
    prediction_type = train_scheduler.config.prediction_type
    usable = [n for n in SCHEDULER_CLASSES
              if n not in SAMPLERS_NEEDING_LOW_SIGMA_MAX and prediction_type not in _UNSUPPORTED.get(n, ())]
    return (f"cannot sample a model trained with schedule.beta_schedule = {train_scheduler.config.beta_schedule!r}: "
            f"it starts at sigma = {sigma_max:,.0f} (sqrt(alpha_bar) = {(1 + sigma_max**2) ** -0.5:.1e}), where "
            f"its steps overshoot even with the predicted x0 clipped; use one of: {', '.join(usable)}")


def schedule_sigma_max(train_scheduler: SchedulerMixin) -> float:
    """The Euler-type samplers' starting sigma, sqrt((1 - alpha_bar) / alpha_bar) at the last timestep."""
    alpha_bar = float(train_scheduler.alphas_cumprod[-1].double())
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def _clip_options(name: str, train_scheduler: SchedulerMixin) -> dict:
    """The training scheduler's clip of the predicted x0, in the named sampler's own settings."""
    config = train_scheduler.config
    clip, limit = config.get("clip_sample", False), config.get("clip_sample_range", 1.0)
    if name in ("ddim", "heun"):
        return {"clip_sample": clip, "clip_sample_range": limit}
    options = {"lambda_min_clipped": _LAMBDA_MIN_CLIPPED} if name == "dpm-solver++" else {}
    if name in _CLIPPED_X0 and clip and not config.get("thresholding", False):
        # dynamic thresholding divides by a scale clamped to 1..sample_max_value: at 1 (difflab's
        # clip_sample_range) that is exactly clamp(x0, -1, 1)
        options.update(thresholding=True, sample_max_value=limit)
    return options


def schedule_config(train_scheduler: SchedulerMixin) -> dict:
    """The keys that define the learned process, to pass explicitly to another scheduler's from_config."""
    return {key: train_scheduler.config[key] for key in _SCHEDULE_KEYS if key in train_scheduler.config}


def predict_x0(x: torch.Tensor, output: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The clean image implied by a model output at x = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise."""
    if prediction_type == "sample":
        return output
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (x - s * output) / a
    if prediction_type == "v_prediction":  # v = a*noise - s*x0
        return a * x - s * output
    raise ValueError(f"prediction_type {prediction_type!r}: expected 'epsilon', 'sample' or 'v_prediction'")


def clipped_output(x: torch.Tensor, output: torch.Tensor, alpha_bar: float, prediction_type: str,
                   limit: float) -> torch.Tensor:
    """The model output that predicts x0 clipped to -limit..limit at x (DDIM's use_clipped_model_output)."""
    x0 = predict_x0(x, output, alpha_bar, prediction_type).clamp(-limit, limit)
    if prediction_type == "sample":
        return x0
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    eps = (x - a * x0) / s
    return eps if prediction_type == "epsilon" else a * eps - s * x0  # v = a*noise - s*x0


def _loop_clip(scheduler: SchedulerMixin) -> float | None:
    """The range the loop clips x0 to for this sampler, or None where its step clips (or nothing does)."""
    own = [SCHEDULER_CLASSES[name] for name in _CLIPPED_BY_THE_LOOP]
    if type(scheduler) in own and scheduler.config.get("clip_sample", False):
        return scheduler.config.clip_sample_range
    return None


def timestep_alpha_bars(scheduler: SchedulerMixin) -> list[float]:
    """alpha_bar at each of the scheduler's current timesteps, fractional ones included.

    Euler-type samplers may use fractional timesteps, for which they interpolate sigma =
    sqrt((1 - alpha_bar) / alpha_bar) linearly; this reads alpha_bar back the same way.
    """
    alpha_bar = scheduler.alphas_cumprod.double().cpu()
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt().numpy()
    at = np.interp(scheduler.timesteps.double().cpu().numpy(), np.arange(len(sigmas)), sigmas)
    return (1 / (1 + at**2)).tolist()


def _step_kwargs(scheduler: SchedulerMixin, eta: float, generator: torch.Generator | None) -> dict:
    kwargs = {}
    if isinstance(scheduler, DDIMScheduler):
        kwargs["eta"] = eta
        if scheduler.config.clip_sample or scheduler.config.thresholding:
            kwargs["use_clipped_model_output"] = True  # eps from the clipped x0 (note above _CLIPPED_X0)
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator  # only the stochastic steps take one
    return kwargs


@torch.no_grad()
def diffusers_sample(model_fn: ModelFn, scheduler: SchedulerMixin, noise: torch.Tensor, steps: int,
                     eta: float = 0.0, generator: torch.Generator | None = None,
                     callback: StepCallback | None = None, guidance: LossGuidance | None = None,
                     first_step: int = 0) -> torch.Tensor:
    """Sample from Gaussian `noise` in `steps` steps; `callback` sees every model call.

    `steps` is what set_timesteps is given. Some samplers call the model more often than
    that (Heun twice a step but the first, 2*steps-1 in all; PNDM steps+1), and the
    callback's index and total count model calls: SampleStep(i, total, x_scaled, x0).
    eta reaches only DDIM; the generator only samplers whose step takes one. `guidance` nudges x
    after each model call and before the step, with the same model output (the course's loop).
    `first_step` > 0 starts part of the way down from `noise` already at that step's noise level
    (DDIM inversion's edits); the callback then counts the steps actually taken.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps[first_step:]
    clip = _loop_clip(scheduler)
    needs_alpha_bar = callback is not None or guidance is not None or clip is not None
    alpha_bars = timestep_alpha_bars(scheduler)[first_step:] if needs_alpha_bar else []
    prediction_type = scheduler.config.prediction_type
    kwargs = _step_kwargs(scheduler, eta, generator)
    x = noise * scheduler.init_noise_sigma if first_step == 0 else noise
    for i, t in enumerate(timesteps):
        # the scaled input is sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise for every sampler
        # (Euler-type ones divide by sqrt(sigma^2 + 1)), so one x0 formula serves them all
        x_in = scheduler.scale_model_input(x, t)
        output = model_fn(x_in, t)
        norm = None
        if guidance is not None:
            x, norm = guidance.nudge(
                x, t, output, lambda x_: scheduler.scale_model_input(x_, t),
                lambda x_in_, out: predict_x0(x_in_, out, alpha_bars[i], prediction_type), model_fn)
        if callback is not None:
            x0 = predict_x0(x_in, output, alpha_bars[i], prediction_type)
            callback(SampleStep(i, len(timesteps), x_in, x0, norm))
        if clip is not None:  # after guidance, as the samplers that clip in their step do
            x_in = scheduler.scale_model_input(x, t) if guidance is not None else x_in
            output = clipped_output(x_in, output, alpha_bars[i], prediction_type, clip)
        x = scheduler.step(output, t, x, **kwargs).prev_sample
    return x


def sample_trajectory(model_fn: ModelFn, scheduler: SchedulerMixin, noise: torch.Tensor, steps: int,
                      eta: float = 0.0, generator: torch.Generator | None = None) -> Trajectory:
    """Sample and keep every model call's input and predicted clean image on the CPU."""
    path = Trajectory()
    path.final = diffusers_sample(model_fn, scheduler, noise, steps, eta, generator, path.record).cpu()
    return path
