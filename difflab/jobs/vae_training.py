"""A VAE run (model.kind = 'autoencoder-kl') around the one training loop: the images held out of
training, the previews of their reconstructions, and what follows the last step: RUN/vae (with
its measured scaling factor in config.json, where diffusers pipelines and latent recipes read
it), the report (compression, held-out MSE and PSNR, latent statistics), samples/final.png and
samples/latents.png, the expectations and summary.json.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from diffusers import AutoencoderKL
from PIL import Image

from difflab.diffusion.data import ImageDataset
from difflab.diffusion.latents import LatentCodec
from difflab.diffusion.render import save_png
from difflab.diffusion.vae_report import (
    latent_channels_figure,
    measure_vae,
    reconstruction_figure,
    split_held_out,
)
from difflab.errors import InputError
from difflab.jobs.expectations import as_records, check_expectations
from difflab.jobs.vae_source import save_vae
from difflab.recipe import Recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext


def is_vae(recipe: Recipe) -> bool:
    return recipe.model.kind == "autoencoder-kl"


def held_out_count(recipe: Recipe, size: int) -> int:
    """eval.num_samples images, but never more than a fifth of the dataset: the rest trains."""
    return min(recipe.eval.num_samples, size // 5)


def split_for_vae(recipe: Recipe, data: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    """(the images the VAE trains on, those it is measured on); the same split on every resume."""
    count = held_out_count(recipe, len(data))
    if count < 1:
        raise InputError(f"dataset '{data.name}' has {len(data)} images: a VAE run holds out a fifth of them "
                         f"(at most eval.num_samples) to measure its reconstructions on images it never saw; "
                         f"give it at least 5 (dataset.num_images, dataset.limit)")
    return split_held_out(data, count, recipe.seed)


def preview_figure(vae: AutoencoderKL, held_out: ImageDataset, count: int) -> Image.Image:
    """The first `count` held-out images above their reconstructions: the same images at every
    preview, so the previews show the VAE improving."""
    return reconstruction_figure(LatentCodec(vae, 1.0, held_out.value_range), held_out.images[:count])


def finish_vae(ctx: JobContext, recipe: Recipe, run: RunDir, vae: AutoencoderKL, train: ImageDataset,
               held_out: ImageDataset, *, step: int, ema_weights: Callable[[], AbstractContextManager],
               save_checkpoint: Callable[[], None], summary: Callable[[str], dict]) -> dict:
    """Everything after a VAE's last step; returns summary.json's contents (the session lends what
    only it can do, as for after_training.finish_training)."""
    if not any(p.name == f"step_{step:06d}" for p in run.list_checkpoints()):
        save_checkpoint()
    ctx.emit(events.LogLine(ctx.job_id, f"measuring the VAE: {len(held_out)} held-out images, the latents of "
                                        f"{len(train)} training images"))
    batch = recipe.train.batch_size
    with ema_weights():
        report = measure_vae(vae, train, held_out, batch)
        codec = LatentCodec(vae, report.scaling_factor, held_out.value_range, source=str(run.vae_dir))
        save_vae(codec, run.vae_dir)
        figures = _write_figures(ctx, codec, held_out, run.samples, step, recipe.train.preview_images)
    result = {**summary("finished"), "vae": {**report.as_summary(), "folder": str(run.vae_dir), **figures}}
    result["expectations"] = as_records(check_expectations(recipe.expect, result))
    run.write_summary(result)
    return result


def _write_figures(ctx: JobContext, codec: LatentCodec, held_out: ImageDataset, samples: Path, step: int,
                   count: int) -> dict[str, str]:
    """samples/final.png (held-out originals | reconstructions) and samples/latents.png, each also sent
    to the screen; their paths."""
    pairs = reconstruction_figure(codec, held_out.images[:count])
    final = save_png(pairs, samples / "final.png")
    ctx.emit(events.PreviewReady(ctx.job_id, step, pairs, final))
    channels = latent_channels_figure(codec, held_out.images)
    latents = save_png(channels, samples / "latents.png")
    ctx.emit(events.PreviewReady(ctx.job_id, step, channels, latents, title="latent channels"))
    return {"reconstructions_figure": str(final), "latents_figure": str(latents)}
