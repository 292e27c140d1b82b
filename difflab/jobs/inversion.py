"""The inversion job: a recipe's [invert] run on a trained model, written into a run directory.

Called at the end of `difflab run` when the recipe trains its own model
(after_training.finish_training), or as a job of its own for `difflab invert RUN_DIR` and for
a recipe whose `invert.source` names a model to load. Either way it writes
RUN/inversion/: the originals, the inverted noise, the reconstructions and the
edits as PNG grids, one labelled figure of all four, and errors.json (the error
table, with the step and guidance sweeps). A latent model's inverted noise is a latent:
its grid shows the first three channels as colours (latent-channels.png shows each one).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from difflab.diffusion.data import load_dataset
from difflab.diffusion.generate import SamplingSetup
from difflab.diffusion.guidance import make_guidance
from difflab.diffusion.inversion import (
    Edit,
    InversionSettings,
    ReconstructionError,
    conditioning_labels,
    dataset_images,
    edit,
    file_images,
    image_shape,
    invert_and_reconstruct,
    random_noise_error,
    vae_error,
)
from difflab.diffusion.loading import pipeline_setup, run_setup
from difflab.diffusion.render import image_grid, labelled_rows, latent_figure, save_png
from difflab.errors import InputError
from difflab.files import atomic_write_text
from difflab.jobs.expectations import as_records, check_expectations
from difflab.jobs.sampling import SampleSource, say_weights
from difflab.recipe import InvertConfig, Recipe
from difflab.runtime import events
from difflab.runtime.worker import JobContext

# Inverted latents are (nearly) standard Gaussian: +-3 sigma shows them without clipping most pixels.
NOISE_RANGE = (-3.0, 3.0)


@dataclass
class InversionInputs:
    """The images to invert (in the model's value range) and their classes (-1 = none known)."""

    images: torch.Tensor
    labels: torch.Tensor


def inversion_inputs(cfg: InvertConfig, data, setup: SamplingSetup, base_dir: Path | None) -> InversionInputs:
    """invert.images from the dataset, then invert.image_paths from files (relative to `base_dir`)."""
    parts, labels = [], []
    if cfg.images:
        images, image_labels = dataset_images(data, cfg.images, "invert.images")
        parts.append(images)
        labels.append(image_labels)
    if cfg.image_paths:
        paths = [Path(p).expanduser() if Path(p).expanduser().is_absolute() or base_dir is None
                 else base_dir / p for p in cfg.image_paths]
        channels, size, _ = image_shape(setup)
        parts.append(file_images(paths, size, channels, setup.value_range, "invert.image_paths"))
        labels.append(torch.full((len(paths),), -1, dtype=torch.long))
    return InversionInputs(torch.cat(parts).float(), torch.cat(labels))


class StepCounter:
    """A per-model-call callback that emits throttled Progress over the whole inversion job."""

    def __init__(self, ctx: JobContext | None, total: int) -> None:
        self.ctx, self.total, self.done, self.last = ctx, total, 0, 0.0

    def __call__(self, step) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.ctx is not None and (now - self.last >= events.PROGRESS_INTERVAL_S or self.done == self.total):
            self.last = now
            self.ctx.emit(events.Progress(self.ctx.job_id, min(self.done, self.total), self.total, None))


def model_calls(cfg: InvertConfig, conditional: bool) -> int:
    """How many steps the job takes (inverse and forward), for its progress bar."""
    depth = cfg.steps if cfg.start_step < 0 else cfg.start_step
    guidance = cfg.sweep_guidance if conditional else []
    return 2 * cfg.steps + cfg.steps + 2 * depth + sum(2 * n for n in cfg.sweep_steps) + 2 * cfg.steps * len(guidance)


def run_inversion(setup: SamplingSetup, cfg: InvertConfig, inputs: InversionInputs, folder: Path,
                  progress: StepCounter | None = None, guidance=None) -> dict:
    """Invert, reconstruct, edit and sweep; write the grids and errors.json; return the summary's `invert`."""
    conditional = setup.recipe.model.num_classes > 0
    _check_classes(cfg, setup)
    labels = conditioning_labels(setup, inputs.labels.to(setup.device), len(inputs.images))
    images = inputs.images.to(setup.device)
    settings = InversionSettings(cfg.steps, None, cfg.guidance_scale)
    started = time.perf_counter()
    main = invert_and_reconstruct(setup, images, labels, settings, progress)
    noise_error = random_noise_error(setup, images, labels, settings, setup.recipe.sample.seed)
    if progress is not None:
        progress.done += cfg.steps  # random_noise_error takes no callback: count its steps here
    change = Edit(cfg.edit_class if cfg.edit_class >= 0 else None,
                  cfg.edit_guidance_scale if cfg.edit_guidance_scale >= 0 else None, guidance)
    edit_settings = InversionSettings(cfg.steps, None if cfg.start_step < 0 else cfg.start_step, cfg.guidance_scale)
    edited = edit(setup, images, labels, edit_settings, change, progress)
    steps_rows = [_sweep_row(setup, images, labels, InversionSettings(n, None, cfg.guidance_scale), progress)
                  for n in cfg.sweep_steps]
    guidance_rows = [_sweep_row(setup, images, labels, InversionSettings(cfg.steps, None, g), progress)
                     for g in (cfg.sweep_guidance if conditional else [])]
    vae_alone = vae_error(setup, images)
    value_range, nrow = setup.value_range, len(images)
    grids = {"originals": main.originals, "reconstructions": main.reconstructions, "edits": edited}
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in grids.items():
        save_png(image_grid(batch, value_range, nrow=nrow, scale=2), folder / f"{name}.png")
    noise = noise_pictures(main.latents, main.originals.shape[-1]) if setup.codec else main.latents
    save_png(image_grid(noise, NOISE_RANGE, nrow=nrow, scale=2), folder / "inverted-noise.png")
    if setup.codec is not None:
        save_png(latent_figure(main.originals, main.latents, value_range, main.reconstructions),
                 folder / "latent-channels.png")
    figure = labelled_rows([main.originals, _in_range(noise, value_range), main.reconstructions, edited],
                           ["original", "inverted noise", "reconstruction", f"edit ({_describe(change, edit_settings)})"],
                           value_range, title=f"DDIM inversion, {cfg.steps} steps")
    save_png(figure, folder / "inversion.png")
    table = {"steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "images": len(images),
             "mse": main.error.mean_mse, "psnr": main.error.mean_psnr,
             "per_image": {"mse": main.error.mse, "psnr": main.error.psnr},
             "random_noise_mse": noise_error.mean_mse, "random_noise_psnr": noise_error.mean_psnr,
             **({"vae_mse": vae_alone.mean_mse, "vae_psnr": vae_alone.mean_psnr} if vae_alone else {}),
             "edit": {"start_step": edit_settings.depth, "class_label": change.class_label,
                      "guidance_scale": change.guidance_scale, "loss_guidance": guidance is not None},
             "sweep_steps": steps_rows, "sweep_guidance": guidance_rows,
             "folder": str(folder), "figure": str(folder / "inversion.png"),
             "elapsed_s": round(time.perf_counter() - started, 3)}
    atomic_write_text(folder / "errors.json", json.dumps(table, indent=2))
    return table


def _sweep_row(setup, images, labels, settings: InversionSettings, progress) -> dict:
    error: ReconstructionError = invert_and_reconstruct(setup, images, labels, settings, progress).error
    return {"steps": settings.steps, "guidance_scale": settings.guidance_scale,
            "mse": error.mean_mse, "psnr": error.mean_psnr}


def noise_pictures(latents: torch.Tensor, size: int) -> torch.Tensor:
    """A latent model's inverted noise as pictures beside its images: the first three channels as
    colours (the first alone, grey, when it has fewer), each cell covering the pixels it encodes."""
    shown = latents[:, :3] if latents.shape[1] >= 3 else latents[:, :1]
    return F.interpolate(shown.float(), size=(size, size), mode="nearest")


def _in_range(latents: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Latents mapped from NOISE_RANGE into the images' value range, to share one figure with them."""
    low, high = value_range
    unit = (latents - NOISE_RANGE[0]) / (NOISE_RANGE[1] - NOISE_RANGE[0])
    return unit * (high - low) + low


def _describe(change: Edit, settings: InversionSettings) -> str:
    parts = [f"from step {settings.depth}"]
    if change.class_label is not None:
        parts.append(f"class {change.class_label}")
    if change.guidance_scale is not None:
        parts.append(f"cfg {change.guidance_scale:g}")
    if change.guidance is not None:
        parts.append("loss guidance")
    return ", ".join(parts)


def _check_classes(cfg: InvertConfig, setup: SamplingSetup) -> None:
    """Class settings against the model actually loaded (a source's model may differ from the recipe)."""
    classes = setup.recipe.model.num_classes
    if not classes and (cfg.edit_class >= 0 or cfg.guidance_scale != 1 or cfg.sweep_guidance
                        or cfg.edit_guidance_scale not in (-1, 1)):
        raise InputError("invert: edit_class, guidance_scale, edit_guidance_scale and sweep_guidance need a "
                         "class-conditional model, and this one is unconditional")
    if classes and cfg.edit_class >= classes:
        raise InputError(f"invert.edit_class = {cfg.edit_class}: outside 0..{classes - 1} (the model has {classes} classes)")
    if cfg.steps > setup.recipe.schedule.num_train_timesteps:
        raise InputError(f"invert.steps = {cfg.steps}: at most the model's {setup.recipe.schedule.num_train_timesteps} "
                         f"training timesteps")


def log_errors(ctx: JobContext, table: dict) -> None:
    """The headline numbers as log lines (the table itself is printed by the headless runner)."""
    vae = f"; the VAE alone: MSE {table['vae_mse']:.5f}" if "vae_mse" in table else ""
    ctx.emit(events.LogLine(ctx.job_id, f"DDIM inversion, {table['steps']} steps: MSE {table['mse']:.5f}, PSNR "
                                        f"{table['psnr']:.2f} dB (sampling from random noise: MSE "
                                        f"{table['random_noise_mse']:.5f}{vae})"))


class InvertJob:
    """Invert images with a model from a run directory or a pipeline (`difflab invert`, `invert.source`)."""

    name = "invert"

    def __init__(self, cfg: InvertConfig, source, out: Path, recipe: Recipe | None = None,
                 recipe_dir: Path | None = None, device: str = "auto", run=None) -> None:
        self.cfg, self.source, self.out = cfg, source, Path(out)
        self.recipe, self.recipe_dir, self.device, self.run_dir = recipe, recipe_dir, device, run

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        setup, data, base = self._load(ctx.device)
        say_weights(ctx, setup)
        inputs = inversion_inputs(self.cfg, data, setup, base)
        total = model_calls(self.cfg, setup.recipe.model.num_classes > 0)
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, total, 0, self.out))
        guidance = self._loss_guidance(setup)
        table = run_inversion(setup, self.cfg, inputs, self.out / "inversion", StepCounter(ctx, total), guidance)
        log_errors(ctx, table)
        summary = {"status": "finished", "job": "invert", "run_dir": str(self.out), "device": ctx.device,
                   "invert": table}
        if self.run_dir is not None:  # a recipe's run: check its [expect] and keep the summary
            summary["expectations"] = as_records(check_expectations(self.recipe.expect, summary))
            self.run_dir.write_summary(summary)
        return "finished", summary

    def _load(self, device: str):
        if self.source.pipeline:
            setup = pipeline_setup(self.source.pipeline, [], device)
            channels, size, _ = image_shape(setup)
            dataset = (self.recipe.dataset if self.recipe is not None else setup.recipe.dataset).model_copy(
                update={"image_size": size, "channels": channels, "value_range": "-1..1"})
            return setup, load_dataset(dataset, self.recipe_dir), self.recipe_dir
        setup = run_setup(Path(self.source.run_dir), [], device)
        if setup.train_scheduler is None or setup.recipe.schedule.kind != "ddpm":
            raise InputError(f"{self.source.run_dir}: its model was trained on the toy schedule; DDIM inversion "
                             f"needs schedule.kind = 'ddpm'")
        r = setup.recipe
        return setup, load_dataset(r.dataset, None, r.seed, r.audio), self.recipe_dir

    def _loss_guidance(self, setup: SamplingSetup):
        if not self.cfg.edit_loss_guidance:
            return None
        recipe = self.recipe or setup.recipe
        return make_guidance(recipe, setup.value_range, setup.device)


def inversion_table_rows(inv: dict) -> list[tuple[str, str, str, str, str]]:
    """errors.json as table rows (setting, steps, guidance, MSE, PSNR), for the CLI and the inversion screen."""
    rows = [("reconstruction", inv["steps"], inv["guidance_scale"], inv["mse"], inv["psnr"]),
            ("random noise instead", inv["steps"], inv["guidance_scale"], inv["random_noise_mse"],
             inv["random_noise_psnr"])]
    for name, sweep in (("step sweep", inv["sweep_steps"]), ("guidance sweep", inv["sweep_guidance"])):
        rows += [(name, row["steps"], row["guidance_scale"], row["mse"], row["psnr"]) for row in sweep]
    table = [(name, str(steps), f"{scale:g}", f"{mse:.5f}", f"{psnr:.2f}") for name, steps, scale, mse, psnr in rows]
    if "vae_mse" in inv:  # a latent model: what its VAE loses with no diffusion at all
        table.insert(2, ("the VAE alone (encode, decode)", "-", "-", f"{inv['vae_mse']:.5f}", f"{inv['vae_psnr']:.2f}"))
    return table


INVERSION_GRIDS = ("originals", "inverted-noise", "reconstructions", "edits")


class FolderInversionJob:
    """The inversion screen's job: `recipe.invert` run on a run or pipeline folder.

    InvertJob does the work and writes SOURCE/inversion/ (a run) or ./inversion-NAME/
    (a pipeline), as `difflab invert` does; the summary adds the four grids it wrote, as
    pictures, so the screen shows exactly the files, and the error table's rows (`table_rows`).
    [guidance] comes from `recipe`.
    """

    name = "invert"

    def __init__(self, recipe: Recipe, source: Path, recipe_dir: Path | None = None) -> None:
        self.recipe, self.source, self.recipe_dir = recipe, Path(source), recipe_dir

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        cfg = self.recipe.invert
        if not cfg.images and not cfg.image_paths:
            raise InputError("invert.images = []: give dataset indices or invert.image_paths to invert")
        if not self.source.is_dir():
            raise InputError(f"invert.source = '{self.source}': no such folder (give a run or a pipeline folder)")
        source = SampleSource.of_folder(self.source)
        out = Path(f"inversion-{self.source.name}") if source.pipeline else self.source
        status, summary = InvertJob(cfg, source, out, self.recipe, self.recipe_dir).run(ctx)
        grids = {}
        for grid in INVERSION_GRIDS:
            with Image.open(out / "inversion" / f"{grid}.png") as image:
                grids[grid] = image.copy()
        return status, {**summary, "grids": grids, "table_rows": inversion_table_rows(summary["invert"])}
