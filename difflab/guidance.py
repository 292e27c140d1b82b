"""Loss guidance: nudge every sampling step down the gradient of a loss on the predicted image.

The course's colour guidance: at each step, predict the clean image x0 from x_t,
score it with a differentiable loss, and move x_t by -scale * d loss / d x_t before
the scheduler's step. The gradient reaches x_t either through the x0 formula alone
(the model's output held fixed: cheap) or through the model as well (the course's
second variant: better, two to three times slower).

Guidance functions live in a registry: a name, a one-line description and a builder
that turns the recipe's [guidance] section into loss(x0) -> scalar. A new one (say a
classifier's -log p(class | x0)) is one `@register` away; its name also goes into
recipe.GUIDANCE_FUNCTIONS so recipes can name it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from difflab.recipe import GuidanceConfig, Recipe

GuidanceLoss = Callable[[torch.Tensor], torch.Tensor]
"""loss(x0) -> a scalar tensor; x0 is (N, C, H, W) in the model's value range."""

GuidanceBuilder = Callable[[GuidanceConfig, tuple[float, float], str], GuidanceLoss]


@dataclass(frozen=True)
class GuidanceFunction:
    """A registered guidance function: its recipe name, what it does, and how it is built."""

    name: str
    description: str
    build: GuidanceBuilder


GUIDANCE: dict[str, GuidanceFunction] = {}


def register(name: str, description: str) -> Callable[[GuidanceBuilder], GuidanceBuilder]:
    """Add a guidance builder under `name` (the value of guidance.function in a recipe)."""
    def add(build: GuidanceBuilder) -> GuidanceBuilder:
        GUIDANCE[name] = GuidanceFunction(name, description, build)
        return build
    return add


@register("color", "mean distance of every pixel to guidance.color (the course's colour guidance)")
def color_loss(cfg: GuidanceConfig, value_range: tuple[float, float], device: str) -> GuidanceLoss:
    low, high = value_range
    # the target in the model's own range, as the course does (color * 2 - 1 for -1..1 data)
    target = (torch.tensor(cfg.color, device=device) * (high - low) + low).view(1, 3, 1, 1)
    return lambda x0: (x0 - target).abs().mean()


@dataclass
class LossGuidance:
    """A guidance loss, its scale, and whether the gradient goes through the model."""

    loss: GuidanceLoss
    scale: float
    through_model: bool = False

    def nudge(self, x: torch.Tensor, t, output: torch.Tensor, scale_input, to_x0, model_fn
              ) -> tuple[torch.Tensor, float]:
        """x moved by -scale * d loss(x0) / dx, and the norm of that move (for the step-through view).

        `scale_input(x)` is the scheduler's input scaling, `to_x0(x_in, output)` the clean-image
        formula for this step, `output` the model's output the step already computed.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            x_in = scale_input(x)
            out = model_fn(x_in, t) if self.through_model else output
            loss = self.loss(to_x0(x_in, out).float()) * self.scale
            gradient = torch.autograd.grad(loss, x)[0]
        return (x - gradient).detach(), float(gradient.norm())


def make_guidance(recipe: Recipe, value_range: tuple[float, float], device: str) -> LossGuidance | None:
    """The recipe's loss guidance, or None when guidance.function is 'none' or its scale 0."""
    cfg = recipe.guidance
    if cfg.function == "none" or cfg.scale == 0:
        return None
    return LossGuidance(GUIDANCE[cfg.function].build(cfg, value_range, device), cfg.scale, cfg.through_model)
