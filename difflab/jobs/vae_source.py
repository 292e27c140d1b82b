"""The VAE a latent recipe diffuses in: found where `latent.vae` points, or, for a built-in VAE
recipe (`vae-shapes`, `vae-shapes:smoke`), trained once and cached like a reference classifier.

The run keeps its own copy (RUN/vae, with the scaling factor it used in its config), so sampling,
evaluating, inverting and exporting the run later never depend on where the VAE first came from.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from difflab.diffusion.latents import LatentCodec, VaeSpec, builtin_vae_recipe, open_codec, parse_vae_spec
from difflab.diffusion.reference import cache_dir
from difflab.errors import JobFailed
from difflab.files import atomic_dir, waiting_lock
from difflab.recipe import Recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext

VERSION = 1  # part of the cache key: bump when VAE training changes

# Trains a recipe into a run folder: (ctx, recipe, run) -> (status, summary). The training job
# passes its own loop in, so this module needs no import of it (that would be a cycle).
TrainVae = Callable[[JobContext, Recipe, RunDir], tuple[str, dict]]


def run_codec(ctx: JobContext, recipe: Recipe, run: RunDir, recipe_dir: Path | None, device: str,
              train: TrainVae) -> LatentCodec:
    """The run's VAE: its own copy when it has one (a resume), else latent.vae's, copied into RUN/vae."""
    if (run.vae_dir / "config.json").is_file():
        return open_codec(recipe, run.vae_dir, device, source=f"{recipe.latent.vae} (the run's copy)")
    codec = open_codec(recipe, vae_location(ctx, recipe, recipe_dir, train), device, source=recipe.latent.vae)
    save_vae(codec, run.vae_dir)
    return codec


def save_vae(codec: LatentCodec, folder: Path) -> None:
    """The VAE with the scaling factor its latents were scaled by (what diffusers' pipelines read)."""
    codec.vae.register_to_config(scaling_factor=codec.scaling_factor)
    with atomic_dir(folder) as tmp:
        codec.vae.save_pretrained(tmp, safe_serialization=True)


def vae_location(ctx: JobContext, recipe: Recipe, recipe_dir: Path | None, train: TrainVae) -> str:
    """A folder (or hub id) holding the AutoencoderKL latent.vae names; a built-in recipe's is
    trained now unless the cache has it."""
    spec = parse_vae_spec(recipe.latent.vae, recipe_dir)
    found = cached_location(spec)
    if found is not None:
        return found
    folder = _builtin_folder(spec)
    with waiting_lock(folder.with_name(f".{folder.name}.lock")):
        if not (folder / "vae" / "config.json").is_file():  # another process may have trained it meanwhile
            _train_builtin(ctx, builtin_vae_recipe(spec), spec.text, folder, train)
    return str(folder / "vae")


def cached_location(spec: VaeSpec) -> str | None:
    """Where the AutoencoderKL is without training anything: its folder or hub id, or a built-in
    recipe's cached VAE; None for a built-in VAE recipe not trained yet (the schedule screen's
    probe asks this: it shows latent noise only with a VAE at hand, and never trains one)."""
    if spec.kind == "folder":
        return str(spec.folder)
    if spec.kind == "hub":
        return spec.text
    folder = _builtin_folder(spec)
    return str(folder / "vae") if (folder / "vae" / "config.json").is_file() else None


def _builtin_folder(spec: VaeSpec) -> Path:
    """The cache folder of a built-in VAE recipe (its run folder once trained)."""
    vae_recipe = builtin_vae_recipe(spec)
    return cache_dir() / "vaes" / f"{spec.recipe}{'-' + spec.profile if spec.profile else ''}-{_key(vae_recipe)}"


def _key(recipe: Recipe) -> str:
    """What the trained VAE depends on: not where it ran, nor what it was expected to reach."""
    text = recipe.model_dump_json(exclude={"profiles", "device", "description", "expect"}) + f"v{VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _train_builtin(ctx: JobContext, recipe: Recipe, name: str, folder: Path, train: TrainVae) -> None:
    """Train the built-in VAE recipe into `folder` (its run folder), telling the person as it goes."""
    ctx.emit(events.LogLine(ctx.job_id, f"training the VAE '{name}' first (once; cached in {folder})"))
    shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt that did not finish
    run = RunDir.create(folder, recipe)
    status, summary = train(replace(ctx, emit=_as_log_lines(ctx, name)), recipe, run)
    if status != "finished" or not (run.vae_dir / "config.json").is_file():
        raise JobFailed(f"latent.vae = '{name}': the VAE's training {status} before it was saved; "
                        f"nothing was cached (run it again to train it)")
    vae = summary.get("vae", {})
    ctx.emit(events.LogLine(ctx.job_id, f"VAE '{name}' trained in {summary.get('elapsed_s', 0):.0f} s"
                            + (f": held-out PSNR {vae['psnr_db']:.1f} dB" if "psnr_db" in vae else "")))


def _as_log_lines(ctx: JobContext, name: str):
    """The VAE job's events as log lines of the job that waits for it (its own would reset the screen)."""
    def emit(event) -> None:
        if isinstance(event, events.LogLine):
            ctx.emit(replace(event, text=f"VAE: {event.text}"))
        elif isinstance(event, events.StepLogged):
            ctx.emit(events.LogLine(ctx.job_id, f"VAE '{name}' step {event.step}: loss {event.loss:.4g}"))
    return emit
