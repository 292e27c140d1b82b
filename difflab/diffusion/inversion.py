"""DDIM inversion: run the deterministic sampler backwards from an image to the noise that makes it.

DDIM with eta = 0 is an ODE solver, so its steps can be taken in reverse
(diffusers' DDIMInverseScheduler): from a clean image, each step adds the noise
the model predicts, ending at a latent that the forward DDIM sampler turns back
into (nearly) the same image. The error comes from evaluating the model at the
step's far end instead of along the way, so it falls as the step count rises
(Song et al., DDIM, Table 2) and grows with classifier-free guidance, which bends
the path the two directions follow differently.

An edit inverts only part of the way (the first `start_step` of the inverse
steps, the low-noise end) and samples forward from there with something changed:
another class, another guidance scale, or a loss guidance function.

A latent model inverts the image's latent: the image goes through the VAE's encoder, the
latent is inverted and sampled back, and the result is decoded, so its error (in pixels, against
the image) includes what the VAE itself loses (`vae_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from torchmetrics.functional.image import peak_signal_noise_ratio

from difflab.diffusion.conditioning import guided_model_fn
from difflab.diffusion.data import decode_image
from difflab.diffusion.generate import SamplingSetup
from difflab.diffusion.guidance import LossGuidance
from difflab.diffusion.models import null_class
from difflab.diffusion.render import to_unit
from difflab.diffusion.samplers import SampleStep, StepCallback, diffusers_sample, schedule_config
from difflab.errors import InputError


@dataclass
class InversionSettings:
    """One inversion and the way back: step count, how far back, class and guidance scale."""

    steps: int = 50
    start_step: int | None = None  # inverse steps actually taken (None: all of them)
    guidance_scale: float = 1.0

    @property
    def depth(self) -> int:
        return self.steps if self.start_step is None else self.start_step


@dataclass
class ReconstructionError:
    """Per-image MSE (pixels in 0..1, as the DDIM paper reports it) and PSNR in dB."""

    mse: list[float]
    psnr: list[float]

    @property
    def mean_mse(self) -> float:
        return sum(self.mse) / len(self.mse)

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)


def inverse_scheduler(setup: SamplingSetup) -> DDIMInverseScheduler:
    """DDIM's inverse, configured from the model's own training scheduler (betas, prediction type).

    Without clipping x0 (DDPM's default clips it to -1..1 on the way): a clipped step has no
    inverse, and measured on a small digits model clipping made the error grow with more steps
    (with DDIM's clipped step as samplers.py then took it, the model's unclipped eps kept).
    """
    if setup.train_scheduler is None:
        raise InputError("DDIM inversion needs a model trained with a noise schedule "
                         "(schedule.kind = 'ddpm'); the toy schedule has no sampler to run backwards")
    return DDIMInverseScheduler.from_config(setup.train_scheduler.config, **schedule_config(setup.train_scheduler),
                                            clip_sample=False)


def forward_scheduler(setup: SamplingSetup):
    """The deterministic DDIM sampler with the same configuration (and no clipping), for the way back."""
    return DDIMScheduler.from_config(setup.train_scheduler.config, **schedule_config(setup.train_scheduler),
                                     clip_sample=False)


@torch.no_grad()
def invert(setup: SamplingSetup, images: torch.Tensor, labels: torch.Tensor | None, settings: InversionSettings,
           callback: StepCallback | None = None) -> torch.Tensor:
    """The latent `settings.depth` inverse DDIM steps (of `settings.steps`) away from `images`
    (for a latent model, from their VAE latents).

    Its noise level is the one the forward sampler reaches after `steps - depth` of its
    steps, so `sample_from` continues from there. Depth 0 returns the images (a latent model's
    latents) unchanged.
    """
    setup.model.eval()
    model_fn = guided_model_fn(setup.model, labels, settings.guidance_scale)
    scheduler = inverse_scheduler(setup)
    scheduler.set_timesteps(settings.steps, device=images.device)
    x = model_space(setup, images)
    timesteps = scheduler.timesteps[:settings.depth]
    for i, t in enumerate(timesteps):
        output = model_fn(x, t)
        step = scheduler.step(output, t, x)
        if callback is not None:
            callback(SampleStep(i, len(timesteps), x, step.pred_original_sample))
        x = step.prev_sample
    return x


@torch.no_grad()
def sample_from(setup: SamplingSetup, latent: torch.Tensor, labels: torch.Tensor | None,
                settings: InversionSettings, guidance: LossGuidance | None = None,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Forward DDIM from a latent `invert` made with the same steps and depth, back to images
    (a latent model's decoded through its VAE)."""
    model_fn = guided_model_fn(setup.model, labels, settings.guidance_scale)
    first = settings.steps - settings.depth
    return setup.decoded(diffusers_sample(model_fn, forward_scheduler(setup), latent, settings.steps, eta=0.0,
                                          callback=callback, guidance=guidance, first_step=first))


def model_space(setup: SamplingSetup, images: torch.Tensor) -> torch.Tensor:
    """Images as the model sees them: themselves, or a latent model's VAE latents (scaled)."""
    images = images.to(setup.device)
    return images if setup.codec is None else setup.codec.encode(images)


def image_shape(setup: SamplingSetup) -> tuple[int, int, int]:
    """(channels, size, size) of the model's images: a latent model's are its VAE's, not the latent's."""
    if setup.codec is None:
        return setup.shape
    _, height, width = setup.shape
    factor = setup.codec.downscale
    return int(setup.codec.vae.config.in_channels), height * factor, width * factor


def vae_error(setup: SamplingSetup, images: torch.Tensor) -> ReconstructionError | None:
    """A latent model's floor: the error of the VAE alone (encode, decode), which no inversion
    through it can beat; None for a pixel-space model."""
    if setup.codec is None:
        return None
    return reconstruction_error(images, setup.decoded(model_space(setup, images)), setup.value_range)


def reconstruction_error(original: torch.Tensor, result: torch.Tensor,
                         value_range: tuple[float, float]) -> ReconstructionError:
    """Per-image MSE and PSNR of `result` against `original`, both mapped to 0..1."""
    a, b = to_unit(original.float().cpu(), value_range), to_unit(result.float().cpu(), value_range)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    # an exact copy has infinite PSNR; torchmetrics would divide by zero, so cap it at 100 dB
    psnr = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return ReconstructionError(mse.tolist(), psnr.nan_to_num(100.0, posinf=100.0).clamp(max=100.0).tolist())


@dataclass
class Inversion:
    """What one inversion produced: the originals, the latents, the reconstructions, and their error."""

    originals: torch.Tensor
    latents: torch.Tensor
    reconstructions: torch.Tensor
    error: ReconstructionError


def invert_and_reconstruct(setup: SamplingSetup, images: torch.Tensor, labels: torch.Tensor | None,
                           settings: InversionSettings, callback: StepCallback | None = None) -> Inversion:
    """Invert `images` and sample them back with the same class, guidance and steps."""
    latents = invert(setup, images, labels, settings, callback)
    back = sample_from(setup, latents, labels, settings, callback=callback)
    return Inversion(images.cpu(), latents.cpu(), back.cpu(), reconstruction_error(images, back, setup.value_range))


@dataclass
class Edit:
    """What changes on the way forward: class, guidance scale, loss guidance (None = keep)."""

    class_label: int | None = None
    guidance_scale: float | None = None
    guidance: LossGuidance | None = None

    def changes_anything(self) -> bool:
        return self.class_label is not None or self.guidance_scale is not None or self.guidance is not None


def edit(setup: SamplingSetup, images: torch.Tensor, labels: torch.Tensor | None, settings: InversionSettings,
         change: Edit, callback: StepCallback | None = None) -> torch.Tensor:
    """Invert `settings.depth` steps back, then sample forward with `change` applied."""
    latents = invert(setup, images, labels, settings, callback)
    if change.class_label is not None:
        labels = torch.full((len(images),), change.class_label, dtype=torch.long, device=setup.device)
    scale = settings.guidance_scale if change.guidance_scale is None else change.guidance_scale
    forward = InversionSettings(settings.steps, settings.start_step, scale)
    return sample_from(setup, latents, labels, forward, change.guidance, callback).cpu()


def random_noise_error(setup: SamplingSetup, images: torch.Tensor, labels: torch.Tensor | None,
                       settings: InversionSettings, seed: int = 0) -> ReconstructionError:
    """The error of sampling from random noise instead: what inversion must beat by far."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(images), *setup.shape), generator=generator).to(setup.device)
    full = InversionSettings(settings.steps, None, settings.guidance_scale)
    return reconstruction_error(images, sample_from(setup, noise, labels, full), setup.value_range)


# ---------------------------------------------------------------- images in


def dataset_images(data, indices: list[int], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a loaded dataset at `indices` (an index out of range is bad input)."""
    bad = [i for i in indices if not 0 <= i < len(data)]
    if bad:
        raise InputError(f"{what} = {indices}: {bad} outside 0..{len(data) - 1} (the dataset has {len(data)} images)")
    picked = torch.tensor(indices, dtype=torch.long)
    return data.images[picked], data.labels[picked]


def file_images(paths: list[Path], size: int, channels: int, value_range: tuple[float, float],
                what: str) -> torch.Tensor:
    """PNG/JPEG files, fitted to size x size in the model's channels and value range."""
    mode = "RGB" if channels == 3 else "L"
    arrays = [decode_image(Path(p), size, mode, what) for p in paths]
    images = torch.stack([torch.tensor(a, dtype=torch.float32) / 255.0 for a in arrays])
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2)
    low, high = value_range
    return (images * (high - low) + low).contiguous()


def conditioning_labels(setup: SamplingSetup, labels: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """Class labels for a class-conditional model: the images' own (unlabelled -1 -> 'no class'), else None."""
    null = null_class(setup.model)
    if null is None:
        return None
    if labels is None:
        return torch.full((count,), null, dtype=torch.long, device=setup.device)
    return torch.where(labels < 0, torch.full_like(labels, null), labels).to(setup.device)
