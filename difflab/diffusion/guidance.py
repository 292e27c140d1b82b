"""Loss guidance: nudge every sampling step down the gradient of a loss on the predicted image.

The course's colour guidance: at each step, predict the clean image x0 from x_t,
score it with a differentiable loss, and move x_t by -scale * d loss / d x_t before
the scheduler's step. The gradient reaches x_t either through the x0 formula alone
(the model's output held fixed: cheap) or through the model as well (the course's
second variant: better, two to three times slower).

Guidance functions live in a registry: a name, a one-line description and a builder
that turns the recipe into loss(x0) -> scalar. A new one is one `@register` away; its
name and help go into difflab.recipe.registry so recipes can name it. Registered:
colour (the course's) and classifier guidance, -log p(target class | x0) under the
dataset's reference classifier (reference.py: trained offline on the same images).
`guidance_effect` measures what guidance did: the loss of samples with it and without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.diffusion.data import load_dataset
from difflab.diffusion.reference import missing_reason, reference_classifier
from difflab.errors import InputError
from difflab.recipe import GUIDANCE_FUNCTIONS_BY_NAME, Recipe

GuidanceLoss = Callable[[torch.Tensor], torch.Tensor]
"""loss(x0) -> a scalar tensor; x0 is (N, C, H, W) in the model's value range."""

GuidanceBuilder = Callable[[Recipe, tuple[float, float], str, "Path | None"], GuidanceLoss]
"""build(recipe, value_range, device, data_dir): data_dir is where a relative dataset path resolves."""


@dataclass(frozen=True)
class GuidanceFunction:
    """A registered guidance function: its recipe name, what it does, and how it is built."""

    name: str
    description: str
    build: GuidanceBuilder
    summed: bool = False  # the loss sums over the images (reports divide by the count)


GUIDANCE: dict[str, GuidanceFunction] = {}


def register(name: str, description: str, summed: bool = False) -> Callable[[GuidanceBuilder], GuidanceBuilder]:
    """Add a guidance builder under `name` (the value of guidance.function in a recipe)."""
    def add(build: GuidanceBuilder) -> GuidanceBuilder:
        GUIDANCE[name] = GuidanceFunction(name, description, build, summed)
        return build
    return add


@register("color", GUIDANCE_FUNCTIONS_BY_NAME["color"].help)
def color_loss(recipe: Recipe, value_range: tuple[float, float], device: str, data_dir: Path | None
               ) -> GuidanceLoss:
    cfg, (low, high) = recipe.guidance, value_range
    # the target in the model's own range, as the course does (color * 2 - 1 for -1..1 data)
    target = (torch.tensor(cfg.color, device=device) * (high - low) + low).view(1, 3, 1, 1)
    return lambda x0: (x0 - target).abs().mean()


@register("classifier", GUIDANCE_FUNCTIONS_BY_NAME["classifier"].help, summed=True)
def classifier_loss(recipe: Recipe, value_range: tuple[float, float], device: str, data_dir: Path | None
                    ) -> GuidanceLoss:
    target_class = recipe.guidance.target_class
    data = load_dataset(recipe.dataset, data_dir, recipe.seed)
    reason = missing_reason(data)
    if reason:
        raise InputError(f"guidance.function = 'classifier': no reference classifier: {reason}")
    if target_class >= len(data.class_names):
        raise InputError(f"guidance.target_class = {target_class}: dataset '{data.name}' has "
                         f"{len(data.class_names)} classes ({', '.join(data.class_names)})")
    classifier = reference_classifier(data, device).model.requires_grad_(False)
    low, high = value_range

    def loss(x0: torch.Tensor) -> torch.Tensor:
        # to 0..1 without data.to_unit's clamp: early predictions of x0 lie outside the range,
        # and a clamp would give those pixels no gradient at all
        logits = classifier((x0 - low) / (high - low))
        target = torch.full((len(x0),), target_class, device=x0.device)
        # summed over images, so each image's pull does not depend on how many are sampled together
        return F.cross_entropy(logits, target, reduction="sum")

    return loss


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


def make_guidance(recipe: Recipe, value_range: tuple[float, float], device: str,
                  data_dir: Path | None = None) -> LossGuidance | None:
    """The recipe's loss guidance, or None when guidance.function is 'none' or its scale 0.

    `data_dir` is where a relative dataset path resolves (classifier guidance reads the data).
    """
    cfg = recipe.guidance
    if cfg.function == "none" or cfg.scale == 0:
        return None
    loss = GUIDANCE[cfg.function].build(recipe, value_range, device, data_dir)
    return LossGuidance(loss, cfg.scale, cfg.through_model)
