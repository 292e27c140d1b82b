"""What the model is trained to predict, and the loss of one batch.

The toy objective is the from-scratch chapter's: corrupt by a random amount,
predict the clean image. The DDPM objective draws a timestep per image, noises
with the scheduler, and predicts noise, the clean sample or v, optionally with
Min-SNR weighting. A class-conditional model also gets each image's label (some
already replaced by "no class", see conditioning.drop_labels). Every random draw comes from the job's generator, whose state
checkpoints save: that is what makes a resumed run exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from difflab.diffusion.models import denoise
from difflab.diffusion.schedules import (
    add_noise,
    corrupt,
    min_snr_weights,
    training_target,
)
from difflab.recipe import Recipe


@dataclass
class BatchLoss:
    """The loss to minimise, and each image's loss with its noise level in 0..1 (for diagnostics);
    a loss of several terms also gives each term's batch mean (`parts`, detached)."""

    loss: torch.Tensor
    per_image: torch.Tensor
    level: torch.Tensor
    parts: dict[str, torch.Tensor] | None = None


class ToyObjective:
    """x*(1-amount) + noise*amount with uniform noise over the data range; predict x."""

    def __init__(self, value_range: tuple[float, float]) -> None:
        self.low, self.high = value_range

    def loss(self, model, x: torch.Tensor, generator: torch.Generator,
             labels: torch.Tensor | None = None) -> BatchLoss:
        noise = torch.rand(x.shape, generator=generator, device=x.device) * (self.high - self.low) + self.low
        amount = torch.rand(len(x), generator=generator, device=x.device)
        prediction = denoise(model, corrupt(x, amount, noise), class_labels=labels)
        per_image = F.mse_loss(prediction, x, reduction="none").mean(dim=(1, 2, 3))
        return BatchLoss(per_image.mean(), per_image.detach(), amount)


class DDPMObjective:
    """Noise x at a random timestep with the scheduler; predict epsilon, x0 or v (MSE)."""

    def __init__(self, recipe: Recipe, scheduler) -> None:
        self.scheduler = scheduler
        self.objective = recipe.train.objective
        self.min_snr_gamma = recipe.train.snr_gamma if recipe.train.loss_weighting == "min-snr" else None

    def loss(self, model, x: torch.Tensor, generator: torch.Generator,
             labels: torch.Tensor | None = None) -> BatchLoss:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (len(x),), generator=generator, device=x.device)
        prediction = denoise(model, add_noise(self.scheduler, x, noise, t), t, labels)
        target = training_target(self.scheduler, x, noise, t, self.objective)
        # float32 for the loss even under autocast: bf16 MSE of small residuals is too coarse
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        raw = per_image.detach()
        if self.min_snr_gamma is not None:
            per_image = per_image * min_snr_weights(self.scheduler, t, self.min_snr_gamma, self.objective)
        return BatchLoss(per_image.mean(), raw, t.float() / steps)


class VaeObjective:
    """A VAE's: reconstruct x through a latent sampled from the encoder's posterior (MSE), plus
    kl_weight times the posterior's KL divergence from N(0, I), as Stable Diffusion's VAE is trained
    (without its adversarial and perceptual terms, which a few CPU-minutes cannot afford)."""

    def __init__(self, kl_weight: float) -> None:
        self.kl_weight = kl_weight

    def loss(self, model, x: torch.Tensor, generator: torch.Generator,
             labels: torch.Tensor | None = None) -> BatchLoss:
        posterior = model.encode(x).latent_dist
        reconstruction = model.decode(posterior.sample(generator=generator)).sample
        per_image = F.mse_loss(reconstruction.float(), x.float(), reduction="none").mean(dim=(1, 2, 3))
        kl = posterior.kl().float()  # per image, summed over the latent's cells (as SD's training sums it)
        loss = per_image.mean() + self.kl_weight * kl.mean()
        parts = {"reconstruction": per_image.detach().mean(), "kl": kl.detach().mean()}
        return BatchLoss(loss, per_image.detach(), torch.zeros_like(per_image), parts)


def make_objective(recipe: Recipe, value_range: tuple[float, float], scheduler=None):
    """The objective a recipe trains with (the scheduler is needed for ddpm)."""
    if recipe.model.kind == "autoencoder-kl":
        return VaeObjective(recipe.train.kl_weight)
    if recipe.schedule.kind == "toy":
        return ToyObjective(value_range)
    return DDPMObjective(recipe, scheduler)
