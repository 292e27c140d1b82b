"""Generating images from a trained model, the way its recipe says.

The toy schedule samples with the course's toy sampler from uniform noise; a
DDPM schedule samples with any diffusers scheduler from Gaussian noise. Both go
through one per-step callback, so the final grid, the step-by-step figure and
the denoising GIF come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from difflab.models import denoise
from difflab.recipe import Recipe
from difflab.sample import StepCallback, Trajectory, starting_noise, toy_sample


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

    def noise(self, count: int) -> torch.Tensor:
        seed = self.recipe.sample.seed
        if self.recipe.schedule.kind == "toy":
            return starting_noise(count, self.shape, seed, self.value_range, self.device)
        generator = torch.Generator().manual_seed(seed)  # CPU generator: same noise on every device
        return torch.randn((count, *self.shape), generator=generator).to(self.device)

    def model_fn(self):
        return lambda x, t=None: denoise(self.model, x, _timestep_batch(t, x))

    def scheduler(self):
        from difflab.samplers import sampler_scheduler

        return sampler_scheduler(self.recipe.sample.sampler, self.train_scheduler)


def _timestep_batch(t, x: torch.Tensor):
    if t is None:
        return None
    t = torch.as_tensor(t, device=x.device)
    return t.expand(len(x)) if t.dim() == 0 else t


@torch.no_grad()
def generate(setup: SamplingSetup, count: int, steps: int, callback: StepCallback | None = None) -> torch.Tensor:
    """`count` images in `steps` steps, in the data's value range."""
    setup.model.eval()
    noise = setup.noise(count)
    if setup.recipe.schedule.kind == "toy":
        return toy_sample(setup.model_fn(), noise, steps, callback)
    from difflab.samplers import diffusers_sample

    s = setup.recipe.sample
    generator = torch.Generator(device=setup.device).manual_seed(s.seed + 1)
    return diffusers_sample(setup.model_fn(), setup.scheduler(), noise, steps, eta=s.eta,
                            generator=generator, callback=callback)


def trajectory(setup: SamplingSetup, count: int, steps: int) -> Trajectory:
    """Sample and keep every step's model input and predicted clean image."""
    path = Trajectory()
    path.final = generate(setup, count, steps, path.record).cpu()
    return path


def figure_rows(path: Trajectory, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`rows` evenly spaced steps of a trajectory (first and last included) for the figure."""
    from difflab.probes import evenly_spaced

    picks = evenly_spaced(len(path.inputs), rows)
    return [path.inputs[i] for i in picks], [path.predictions[i] for i in picks]


def write_samples(setup: SamplingSetup, folder: Path, prefix: str = "") -> Image.Image:
    """PREFIXfinal.png, trajectory.png (x_t | predicted x0 per step), denoising.gif, and for audio
    recipes PREFIXaudio/ (a WAV and a spectrogram PNG per sample); returns the grid."""
    from difflab.render import image_grid, save_png, trajectory_figure

    s, value_range = setup.recipe.sample, setup.value_range
    images = generate(setup, s.num_images, s.steps, setup.progress)
    final = image_grid(images, value_range, scale=2)
    save_png(final, folder / f"{prefix}final.png")
    if setup.recipe.dataset.source == "audio":  # spectrograms become sound: PREFIXaudio/clip_NNN.wav
        from difflab.audio import write_clips

        write_clips(images, value_range, setup.recipe.audio, folder / f"{prefix}audio", seed=s.seed)
    toy = setup.recipe.schedule.kind == "toy"
    whole = trajectory(setup, s.trajectory_images, s.steps) if (s.gif or not toy) else None
    if toy:  # the course's figure is its own short run (5 steps), not 5 rows of the long one
        short = trajectory(setup, s.trajectory_images, s.trajectory_steps)
        inputs, predictions = short.inputs, short.predictions
    else:
        inputs, predictions = figure_rows(whole, s.trajectory_steps)
    save_png(trajectory_figure(inputs, predictions, value_range), folder / f"{prefix}trajectory.png")
    if s.gif:
        from difflab.animate import denoising_gif

        denoising_gif(whole.inputs, whole.predictions, value_range, folder / f"{prefix}denoising.gif")
    return final
