"""Every sampler: the course's toy sampler and any diffusers scheduler, each one loop with
one per-step hook (the k-diffusion way: the step-by-step view, the trajectory figure and
progress reporting hang off that callback, not off copies of the loop).

The toy sampler predicts the clean image and moves part of the way toward it. A diffusers
sampler is a diffusers scheduler built from the training scheduler's config, so
the betas, the prediction type and the clipping of the predicted x0 carry over (the
course swaps DDPM for DDIM the same way). The loop is the one every diffusers pipeline runs (scale the input,
call the model, step), plus a callback that sees each model input and the clean
image the model predicts from it: the step-by-step view, the trajectory figure
and the GIF all hang off that one hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from difflab.diffusion.guidance import LossGuidance
from difflab.errors import InputError
from difflab.recipe.registry import DIFFUSERS_SAMPLERS, SAMPLERS_BY_NAME, prediction_refusal, schedule_refusal


@dataclass
class SampleStep:
    """One sampling step: the model input x_t and the model's prediction of the clean image.

    `guidance_norm` is the norm of the loss-guidance move applied at this step (None without guidance).
    """

    index: int
    total: int
    x: torch.Tensor
    prediction: torch.Tensor
    guidance_norm: float | None = None


StepCallback = Callable[[SampleStep], None]


@dataclass
class Trajectory:
    """Every step's input, prediction and guidance norm, kept on the CPU, plus the final images."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    predictions: list[torch.Tensor] = field(default_factory=list)
    guidance_norms: list[float | None] = field(default_factory=list)
    final: torch.Tensor | None = None

    def record(self, step: SampleStep) -> None:
        self.inputs.append(step.x.detach().cpu())
        self.predictions.append(step.prediction.detach().cpu())
        self.guidance_norms.append(step.guidance_norm)


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""model_fn(x_scaled, t) -> the model's output (noise, clean image or v), e.g. lambda x, t: unet(x, t).sample"""

# The registry names each sampler's diffusers class and its rules: where x0 is clipped (and why),
# its extra options, the prediction types diffusers cannot step, whether it needs a low sigma_max.
SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    name: getattr(diffusers, SAMPLERS_BY_NAME[name].scheduler_class) for name in DIFFUSERS_SAMPLERS}

# What defines the process the model learned. Passed explicitly because from_config drops every
# key the training scheduler left at its default (`_use_default_values`) in favour of the new
# class's own default, and Heun's are Stable Diffusion's betas (0.00085..0.012), not DDPM's.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type")


@torch.no_grad()
def toy_sample(model: torch.nn.Module, x: torch.Tensor, steps: int,
               callback: StepCallback | None = None) -> torch.Tensor:
    """The course's from-scratch sampler: predict x0, move 1/(steps-i) of the way toward it."""
    for i in range(steps):
        prediction = model(x)
        if callback is not None:
            callback(SampleStep(i, steps, x, prediction))
        mix = 1 / (steps - i)  # the last step (i = steps-1) lands exactly on the prediction
        x = x * (1 - mix) + prediction * mix
    return x


def starting_noise(count: int, shape: tuple[int, int, int], seed: int,
                   value_range: tuple[float, float] = (0.0, 1.0), device="cpu") -> torch.Tensor:
    """Uniform noise over the data's value range, the toy process's pure-noise end (amount 1)."""
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same noise on every device
    low, high = value_range
    noise = torch.rand((count, *shape), generator=generator) * (high - low) + low
    return noise.to(device)


def sampler_scheduler(name: str, train_scheduler: SchedulerMixin) -> SchedulerMixin:
    """The named sampler, configured from the training scheduler (same betas, same prediction type)."""
    cls = SCHEDULER_CLASSES.get(name)
    if cls is None:
        raise InputError(f"sampler {name!r} is not a diffusers sampler; valid samplers: "
                         f"{', '.join(SCHEDULER_CLASSES)}")
    config, rule = train_scheduler.config, SAMPLERS_BY_NAME[name]
    refusal = prediction_refusal(name, config.prediction_type) or schedule_refusal(
        name, config.beta_schedule, schedule_sigma_max(train_scheduler), config.prediction_type)
    if refusal is not None:
        raise InputError(f"sampler {name!r} {refusal}")
    scheduler = cls.from_config(config, **schedule_config(train_scheduler), **rule.options,
                                **_clip_options(name, train_scheduler))
    if rule.x0_clip == "loop":  # kept in its config, where DDIM and Heun keep theirs
        scheduler.register_to_config(clip_sample=config.get("clip_sample", False),
                                     clip_sample_range=config.get("clip_sample_range", 1.0))
    return scheduler


def schedule_sigma_max(train_scheduler: SchedulerMixin) -> float:
    """The Euler-type samplers' starting sigma, sqrt((1 - alpha_bar) / alpha_bar) at the last timestep
    (infinite where alpha_bar underflows to 0); difflab.recipe.sigmas computes the same without diffusers."""
    alpha_bar = float(train_scheduler.alphas_cumprod[-1].double())
    return ((1 - alpha_bar) / alpha_bar) ** 0.5 if alpha_bar > 0 else float("inf")


def _clip_options(name: str, train_scheduler: SchedulerMixin) -> dict:
    """The training scheduler's clip of the predicted x0, in the named sampler's own settings."""
    config, where = train_scheduler.config, SAMPLERS_BY_NAME[name].x0_clip
    clip, limit = config.get("clip_sample", False), config.get("clip_sample_range", 1.0)
    if where == "step" and name != "ddpm":  # ddpm takes its clip with the rest of the training config
        return {"clip_sample": clip, "clip_sample_range": limit}
    if where == "thresholding" and clip and not config.get("thresholding", False):
        # dynamic thresholding divides by a scale clamped to 1..sample_max_value: at 1 (difflab's
        # clip_sample_range) that is exactly clamp(x0, -1, 1)
        return {"thresholding": True, "sample_max_value": limit}
    return {}


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
    own = [SCHEDULER_CLASSES[name] for name in DIFFUSERS_SAMPLERS if SAMPLERS_BY_NAME[name].x0_clip == "loop"]
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
    if isinstance(scheduler, SCHEDULER_CLASSES["ddim"]):
        kwargs["eta"] = eta
        if scheduler.config.clip_sample or scheduler.config.thresholding:
            kwargs["use_clipped_model_output"] = True  # eps from the clipped x0 (the registry's note on clipping)
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
