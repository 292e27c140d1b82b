"""Samplers: from noise to images, one step at a time.

Each sampler is a plain function of (model, x, steps) with an optional callback
called once per step with what the step saw and produced, so the step-by-step
view, the trajectory figure and progress reporting hang off one hook instead of
copies of the loop (the k-diffusion way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


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
