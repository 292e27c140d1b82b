"""Generating images from a trained model, the way its recipe says.

The toy schedule samples with the course's toy sampler from uniform noise; a
DDPM schedule samples with any diffusers scheduler from Gaussian noise. Both go
through one per-step callback, so the final grid, the step-by-step figure and
the denoising GIF come from the same code. A class-conditional model samples each
image's class with classifier-free guidance (conditioning.py), and the recipe's
[guidance] nudges every step (guidance.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from difflab.diffusion.animate import denoising_gif
from difflab.diffusion.audio import write_clips
from difflab.diffusion.conditioning import guided_model_fn, sampling_labels
from difflab.diffusion.guidance import GUIDANCE, make_guidance
from difflab.diffusion.latents import LatentCodec
from difflab.diffusion.models import compiled_for_sampling
from difflab.diffusion.render import image_grid, save_png, trajectory_figure
from difflab.diffusion.samplers import (
    StepCallback,
    Trajectory,
    diffusers_sample,
    sampler_scheduler,
    starting_noise,
    toy_sample,
)
from difflab.recipe import Recipe
from difflab.runtime.sequences import evenly_spaced


@dataclass
class SamplingSetup:
    """Everything needed to sample: the model, its recipe, the data's shape and range, the device."""

    model: torch.nn.Module
    recipe: Recipe
    shape: tuple[int, int, int]
    value_range: tuple[float, float]
    device: str
    train_scheduler: object | None = None  # the DDPMScheduler the model was trained with
    progress: StepCallback | None = None  # told of each step of the final grid's sampling
    data_dir: Path | None = None  # where a relative dataset path resolves (classifier guidance reads the data)
    weights: str = ""  # where the model's weights came from, in words ("the step 250 checkpoint ...")
    codec: LatentCodec | None = None  # a latent model's VAE: `shape` is the latent's, images are decoded

    def decoded(self, x: torch.Tensor) -> torch.Tensor:
        """Images of x: itself in pixel space, decoded through the VAE from a latent model's latents."""
        return x if self.codec is None else self.codec.decode(x)

    def noise(self, count: int, seed: int | None = None) -> torch.Tensor:
        seed = self.recipe.sample.seed if seed is None else seed
        if self.recipe.schedule.kind == "toy":
            return starting_noise(count, self.shape, seed, self.value_range, self.device)
        generator = torch.Generator().manual_seed(seed)  # CPU generator: same noise on every device
        return torch.randn((count, *self.shape), generator=generator).to(self.device)

    def labels(self, count: int) -> torch.Tensor | None:
        """Each image's class for a class-conditional model (recipe's sample.class_labels), else None."""
        classes = self.recipe.model.num_classes
        return sampling_labels(count, self.recipe.sample.class_labels, classes, self.device) if classes else None

    def model_fn(self, labels: torch.Tensor | None = None):
        """model_fn(x, t) for images of these classes, with the recipe's classifier-free guidance scale."""
        if not self.recipe.sample.compile:
            return guided_model_fn(self.model, labels, self.recipe.sample.guidance_scale)
        fn = guided_model_fn(compiled_for_sampling(self.model, self.device), labels, self.recipe.sample.guidance_scale)
        # A CUDA graph replays into the same output buffer; multistep samplers keep earlier outputs.
        return lambda x, t=None: fn(x, t).clone()

    def scheduler(self):
        return sampler_scheduler(self.recipe.sample.sampler, self.train_scheduler)

    def guidance(self):
        return make_guidance(self.recipe, self.value_range, self.device, self.data_dir)


@torch.no_grad()
def generate(setup: SamplingSetup, count: int, steps: int, callback: StepCallback | None = None,
             noise: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`count` images in `steps` steps, in the data's value range (a latent model's decoded).

    `noise` and `labels` replace the recipe's seeded noise and class list (the class grid
    gives each column its own seed and each row its class). The callback sees the model's own
    space: a latent model's latents.
    """
    setup.model.eval()
    noise = setup.noise(count) if noise is None else noise
    model_fn = setup.model_fn(setup.labels(count) if labels is None else labels)
    if setup.recipe.schedule.kind == "toy":
        return toy_sample(model_fn, noise, steps, callback)
    s = setup.recipe.sample
    generator = torch.Generator(device=setup.device).manual_seed(s.seed + 1)
    return setup.decoded(diffusers_sample(model_fn, setup.scheduler(), noise, steps, eta=s.eta,
                                          generator=generator, callback=callback, guidance=setup.guidance()))


def trajectory(setup: SamplingSetup, count: int, steps: int) -> Trajectory:
    """Sample and keep every step's model input and predicted clean image."""
    path = Trajectory()
    path.final = generate(setup, count, steps, path.record).cpu()
    return path


def figure_rows(path: Trajectory, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`rows` evenly spaced steps of a trajectory (first and last included) for the figure."""
    picks = evenly_spaced(len(path.inputs), rows)
    return [path.inputs[i] for i in picks], [path.predictions[i] for i in picks]


def write_samples(setup: SamplingSetup, folder: Path, prefix: str = "") -> tuple[Image.Image, torch.Tensor]:
    """PREFIXfinal.png, trajectory.png (x_t | predicted x0 per step), denoising.gif, and for audio
    recipes PREFIXaudio/ (a WAV and a spectrogram PNG per sample); returns the grid and its images."""
    s, value_range = setup.recipe.sample, setup.value_range
    images = generate(setup, s.num_images, s.steps, setup.progress)
    final = image_grid(images, value_range, scale=2)
    save_png(final, folder / f"{prefix}final.png")
    if setup.recipe.dataset.source == "audio":  # spectrograms become sound: PREFIXaudio/clip_NNN.wav
        write_clips(images, value_range, setup.recipe.audio, folder / f"{prefix}audio", seed=s.seed)
    toy = setup.recipe.schedule.kind == "toy"
    whole = trajectory(setup, s.trajectory_images, s.steps) if (s.gif or not toy) else None
    if toy:  # the course's figure is its own short run (5 steps), not 5 rows of the long one
        short = trajectory(setup, s.trajectory_images, s.trajectory_steps)
        inputs, predictions = short.inputs, short.predictions
    else:
        inputs, predictions = figure_rows(whole, s.trajectory_steps)
    decoded = lambda steps: [setup.decoded(x) for x in steps]  # a latent model's steps, as images
    save_png(trajectory_figure(decoded(inputs), decoded(predictions), value_range),
             folder / f"{prefix}trajectory.png")
    if s.gif:
        denoising_gif(decoded(whole.inputs), decoded(whole.predictions), value_range,
                      folder / f"{prefix}denoising.gif")
    return final, images


def guidance_effect(setup, guided, steps: int) -> dict | None:
    """The recipe's guidance loss (per image) on `guided`, samples made with it, and on as many
    sampled from the same noise without it: what `expect.guidance_loss_ratio_below` checks.
    None when the recipe has no guidance (make_guidance's rule)."""
    guidance = setup.guidance()
    if guidance is None:
        return None
    cfg, loss = setup.recipe.guidance, guidance.loss
    function = GUIDANCE[cfg.function]
    unguided = setup.recipe.model_copy(update={"guidance": cfg.model_copy(update={"scale": 0.0})})

    def per_image(images) -> float:
        return float(loss(images.float())) / (len(images) if function.summed else 1)

    count = len(guided)
    off, on = per_image(generate(replace(setup, recipe=unguided, progress=None), count, steps)), per_image(guided)
    return {"function": cfg.function, "scale": cfg.scale, "images": count, "steps": steps,
            "loss_unguided": round(off, 5), "loss_guided": round(on, 5),
            "loss_ratio": round(on / off, 4) if off else None}
