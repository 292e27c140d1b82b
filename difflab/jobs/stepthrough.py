"""Step through sampling: every step's model input x_t beside the predicted clean image.

One seed, one or two samplers: both start from the same noise, so where their
trajectories part shows what the sampler changes. Each model call is one step of
the step-through (Heun calls the model 2*steps-1 times, PNDM steps+1), because
each call is a fresh (x_t, predicted x0) pair worth looking at.

A latent model's steps are latents: each step shows the latent x_t's channels as grey
pictures, and x_t and the predicted x0 decoded through the VAE, so a person sees what the
UNet works on beside the images it stands for.

The result keeps each sampler's Trajectory tensors (CPU) beside the PIL grids, so
`save_outputs` can write the denoising GIF later without sampling again. torch is
imported inside the functions, on the worker: the sampling screen builds these jobs
on the UI thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from difflab.errors import InputError, RecipeError
from difflab.recipe import (
    DIFFUSERS_SAMPLERS,
    SAMPLERS,
    load_recipe,
    parse_recipe,
    samplers_of_schedule,
)
from difflab.runtime import events
from difflab.runtime.runs import source_kind
from difflab.runtime.worker import JobContext

# Between a latent's channel pictures: a colour no grey channel can take, so the picture's cutter
# (screens/picture.py finds a grid's tiles by its grey padding) keeps each image's channels together.
CHANNEL_SEPARATOR = (0.2, 0.3, 0.55)


@dataclass
class SamplerSteps:
    """One sampler's trajectory: a grid per model call for x_t and predicted x0, and the final grid.

    For a latent model, `inputs` and `predictions` are decoded through the VAE and `latents` holds
    each call's x_t as it is: per image, a block of its channels as grey pictures.
    """

    inputs: list[Any]  # PIL images, one per model call
    predictions: list[Any]
    final: Any
    trajectory: Any  # difflab.diffusion.samplers.Trajectory, CPU tensors in pixel space, for the GIF
    latents: list[Any] | None = None  # PIL images, one per model call; None for a pixel-space model
    latent_channels: int = 0


def samplers_for(path: str | Path) -> tuple[str, ...]:
    """The samplers that can sample a source: the toy sampler alone for a run on the toy schedule,
    diffusers' for any other run or pipeline, and all of them while the folder is not a readable
    run yet (the job then says what is wrong with it)."""
    path = Path(path).expanduser()
    kind = source_kind(path)
    if kind == "pipeline":
        return DIFFUSERS_SAMPLERS
    try:
        recipe = load_recipe((path.parent.parent if kind == "checkpoint" else path) / "recipe.toml")
    except RecipeError:
        return SAMPLERS
    return samplers_of_schedule(recipe.schedule.kind)


class StepThroughJob:
    """Sample the same seed with each sampler and keep every step's x_t and predicted x0 as grids."""

    name = "step-through"

    def __init__(self, source_run_dir: Path | None, pipeline: str | None, samplers: list[str], steps: int,
                 seed: int, num_images: int, eta: float = 0.0, device: str = "auto",
                 extra_overrides: list[str] = ()) -> None:
        """`source_run_dir` is a run folder or one of its checkpoint folders; `pipeline` a diffusers folder.

        `extra_overrides` are further `key=value` recipe settings, e.g. sample.class_labels=[3],
        sample.guidance_scale=3, guidance.function='color', guidance.scale=40.
        """
        if (source_run_dir is None) == (pipeline is None):
            raise InputError("step-through: give either a run directory or a pipeline, not both or neither")
        if not 1 <= len(samplers) <= 2:
            raise InputError(f"step-through: {len(samplers)} samplers given; compare one or two")
        self.source_run_dir, self.pipeline = source_run_dir, pipeline
        self.samplers, self.steps, self.seed = list(samplers), steps, seed
        self.num_images, self.eta, self.device = num_images, eta, device
        self.extra_overrides = list(extra_overrides)

    @classmethod
    def from_path(cls, path: str | Path, **settings) -> StepThroughJob:
        """A job for a run, checkpoint or pipeline folder, whichever `path` is."""
        if source_kind(path) == "pipeline":
            return cls(None, str(path), **settings)
        return cls(Path(path).expanduser(), None, **settings)

    @property
    def run_dir(self) -> Path | None:
        """The run folder of a run or checkpoint source; None for a pipeline."""
        run = self.source_run_dir
        if run is None:
            return None
        return run.parent.parent if source_kind(run) == "checkpoint" else run

    @property
    def samples_dir(self) -> Path:
        """Where saved grids and GIFs go: the run's samples/, or ./samples/ for a pipeline."""
        return Path("samples") if self.run_dir is None else self.run_dir / "samples"

    def overrides(self, sampler: str) -> list[str]:
        return [f"sample.sampler='{sampler}'", f"sample.steps={self.steps}", f"sample.seed={self.seed}",
                f"sample.num_images={self.num_images}", f"sample.eta={self.eta}", *self.extra_overrides]

    def setup(self, sampler: str, device: str):
        # torch loads here, on the worker: the sampling screen imports this module on the UI thread
        from difflab.diffusion.loading import checkpoint_setup, pipeline_setup, run_setup

        if self.pipeline:
            return pipeline_setup(self.pipeline, self.overrides(sampler), device)
        folder = self.source_run_dir
        if source_kind(folder) == "checkpoint":
            return checkpoint_setup(folder, self.overrides(sampler), device)
        if folder.is_dir() and not (folder / "recipe.toml").is_file():
            raise InputError(f"{folder}: not a run folder (no recipe.toml), a checkpoint folder (no "
                             f"model.safetensors) or a diffusers pipeline folder (no model_index.json)")
        return run_setup(folder, self.overrides(sampler), device)

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        from difflab.jobs.sampling import SamplingProgress, say_weights  # on the worker (see setup)

        total = self.steps * len(self.samplers)
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, total))
        paths, setup = {}, None
        for i, sampler in enumerate(self.samplers):
            if setup is None:
                setup = self.setup(sampler, ctx.device)
                say_weights(ctx, setup)  # once: every sampler uses the same weights
            else:  # the model is loaded once; only the recipe's sampler changes
                setup.recipe = _with_sampler(setup.recipe, sampler)
            progress = SamplingProgress(ctx, self.steps, total, offset=i * self.steps)
            paths[sampler] = _sample_steps(setup, self.num_images, self.steps, progress)
            if ctx.control.stop_requested:
                return "stopped", {}
        return "finished", {"samplers": paths, "value_range": setup.value_range, "steps": self.steps,
                            "seed": self.seed, "samples_dir": self.samples_dir}


def _with_sampler(recipe, sampler: str):
    """The recipe with another sampler, validated (the toy sampler is refused on a DDPM schedule)."""
    data = recipe.model_dump(mode="json")
    data["sample"]["sampler"] = sampler
    return parse_recipe(data, f"second sampler {sampler!r}")


def _sample_steps(setup, count: int, steps: int, progress) -> SamplerSteps:
    """Sample with `setup` (its own seed, so every sampler starts from the same noise) and grid each step."""
    # on the worker, like every torch import here (see StepThroughJob.setup)
    from difflab.diffusion.generate import generate
    from difflab.diffusion.render import image_grid
    from difflab.diffusion.samplers import Trajectory

    path = Trajectory()

    def on_step(step) -> None:
        path.record(step)
        progress(step)

    path.final = generate(setup, count, steps, on_step).cpu()
    latents = None
    if setup.codec is not None:
        latents = [latent_grid(x, nrow=count) for x in path.inputs]
        path = _decoded(path, setup.codec)
    value_range = setup.value_range
    return SamplerSteps(inputs=[image_grid(x, value_range, nrow=count) for x in path.inputs],
                        predictions=[image_grid(p, value_range, nrow=count) for p in path.predictions],
                        final=image_grid(path.final, value_range, nrow=count), trajectory=path, latents=latents,
                        latent_channels=setup.codec.channels if setup.codec else 0)


def _decoded(path, codec):
    """A latent trajectory's inputs and predictions as images, decoded in one pass (the VAE batches
    them), so the screen's pictures and the GIF show pixels."""
    # on the worker, like every torch import here (see StepThroughJob.setup)
    import torch

    from difflab.diffusion.samplers import Trajectory

    calls = len(path.inputs)
    images = codec.decode(torch.cat([*path.inputs, *path.predictions])).cpu()
    parts = list(images.split([len(x) for x in path.inputs] * 2))
    return Trajectory(parts[:calls], parts[calls:], list(path.guidance_norms), path.final)


def latent_grid(latents, nrow: int):
    """Latents (N, C, h, w) as one grid: per image a block of its C channels, each a grey picture
    (-3..3 std, as render.latent_channels draws them), the blocks on make_grid's grey padding."""
    # on the worker, like every torch import here (see StepThroughJob.setup)
    import torch
    from torchvision.transforms.functional import to_pil_image
    from torchvision.utils import make_grid

    from difflab.diffusion.render import latent_channels

    channels = latent_channels(latents)  # (N, C, 1, h, w)
    count, depth, _, h, w = channels.shape
    columns = math.ceil(math.sqrt(depth))  # 4 channels as 2 x 2: a block as square as the image
    rows = math.ceil(depth / columns)
    blocks = torch.tensor(CHANNEL_SEPARATOR).view(1, 3, 1, 1).repeat(count, 1, rows * (h + 1) - 1,
                                                                     columns * (w + 1) - 1)
    for c in range(depth):
        top, left = (c // columns) * (h + 1), (c % columns) * (w + 1)
        blocks[:, :, top:top + h, left:left + w] = channels[:, c]
    return to_pil_image(make_grid(blocks, nrow=nrow, padding=2, pad_value=0.5))


def save_outputs(result: dict, folder: Path) -> list[Path]:
    """Write each sampler's final grid (PNG, upscaled 2x) and denoising GIF into `folder`; returns the paths."""
    # on the worker, like every torch import here (see StepThroughJob.setup)
    from difflab.diffusion.animate import denoising_gif
    from difflab.diffusion.render import save_png

    folder = Path(folder)
    written = []
    for sampler, steps in result["samplers"].items():
        stem = f"{sampler}-{result['steps']}steps-seed{result['seed']}"
        grid = steps.final.resize((steps.final.width * 2, steps.final.height * 2), Image.Resampling.NEAREST)
        written.append(save_png(grid, folder / f"{stem}.png"))
        path = steps.trajectory
        written.append(denoising_gif(path.inputs, path.predictions, result["value_range"], folder / f"{stem}.gif"))
    return written


class SaveStepThroughJob:
    """Write a finished step-through's grids and GIFs on the worker (the GIF is built from tensors)."""

    name = "save-step-through"

    def __init__(self, result: dict, folder: Path | None = None) -> None:
        self.result, self.folder = result, Path(folder or result["samples_dir"])

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        try:
            paths = save_outputs(self.result, self.folder)
        except OSError as error:
            raise InputError(f"{self.folder}: cannot write the samples ({error.strerror or error})") from None
        return "finished", {"paths": [str(p) for p in paths]}
