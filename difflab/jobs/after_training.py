"""What follows the last training step: the final checkpoint, the exported model (RUN/model,
RUN/lora, RUN/pipeline), the final samples, their evaluation, the guidance effect, the
recipe's inversion, its expectations, summary.json and the pipeline's model card.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from diffusers import DDPMPipeline, LDMPipeline

from difflab.diffusion import class_pipeline
from difflab.diffusion.class_pipeline import ClassConditionalDDPMPipeline
from difflab.diffusion.data import ImageDataset
from difflab.diffusion.generate import SamplingSetup, guidance_effect, write_samples
from difflab.diffusion.latents import LatentCodec
from difflab.diffusion.loading import run_setup
from difflab.diffusion.lora import merged_state_dict, save_lora
from difflab.diffusion.models import build_model, null_class
from difflab.diffusion.schedules import training_noise_scheduler
from difflab.errors import InputError
from difflab.files import atomic_dir
from difflab.jobs.evaluation import job_logger, measure_model
from difflab.jobs.expectations import as_records, check_expectations
from difflab.jobs.inversion import inversion_inputs, log_errors, run_inversion
from difflab.jobs.model_card import write_model_card
from difflab.recipe import Recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext


def finish_training(ctx: JobContext, recipe: Recipe, run: RunDir, data: ImageDataset, setup: SamplingSetup,
                    recipe_dir: Path | None, *, step: int, ema_weights: Callable[[], AbstractContextManager],
                    save_checkpoint: Callable[[], None], summary: Callable[[str], dict]) -> dict:
    """Everything after training, on the trained model (`setup.model`); returns summary.json's contents.

    The session lends what only it can do: swap in the EMA weights, save a checkpoint, and
    describe itself (`summary(status)`, the fields a stopped run writes too).
    """
    if not any(p.name == f"step_{step:06d}" for p in run.list_checkpoints()):
        save_checkpoint()
    s = recipe.sample
    ctx.emit(events.LogLine(ctx.job_id, f"sampling {s.num_images} images in {s.steps} steps ({s.sampler})"))
    with ema_weights():
        export(setup, recipe, run)
        final, images = write_samples(setup, run.samples)
        ctx.emit(events.PreviewReady(ctx.job_id, step, final, run.samples / "final.png"))
        quality = evaluate(ctx, setup, recipe, data)
        quality.update(measure_guidance(ctx, setup, recipe, images))
        quality.update(invert(ctx, setup, recipe, data, run, recipe_dir))
    result = {**summary("finished"), **quality}
    result["expectations"] = as_records(check_expectations(recipe.expect, result))
    run.write_summary(result)
    if run.pipeline_dir.is_dir():
        write_model_card(run, recipe, str(run.pipeline_dir))  # RUN/pipeline/README.md, with the figures above
    return result


def export(setup: SamplingSetup, recipe: Recipe, run: RunDir) -> None:
    """RUN/model (save_pretrained) always; RUN/pipeline, which plain diffusers loads, for DDPM runs
    (a latent run's with its VAE).

    A LoRA run also writes RUN/lora (the adapter alone); its model and pipeline have the
    adapter merged in, so plain diffusers loads them too.
    """
    model = setup.model
    if recipe.train.lora_rank:
        save_lora(model, recipe.train, run.lora_dir)
        model = build_model(recipe).to(setup.device)
        model.load_state_dict(merged_state_dict(setup.model))
    with atomic_dir(run.model_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    if setup.train_scheduler is not None:
        save_pipeline(model, setup.train_scheduler, run.pipeline_dir, setup.codec)


def save_pipeline(model, scheduler, folder: Path, codec: LatentCodec | None = None) -> None:
    """A diffusers pipeline folder: a DDPMPipeline (a latent model: an LDMPipeline, its VAE as
    `vqvae`), or for a class-conditional UNet a ClassConditionalDDPMPipeline (a latent model's with
    its `vae`) with its code beside it (pipeline.py, named in model_index.json), which
    `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads without difflab."""
    vae = None
    if codec is not None:  # the pipelines divide latents by the VAE's config value before decoding
        vae = codec.vae
        vae.register_to_config(scaling_factor=codec.scaling_factor)
    with atomic_dir(folder) as tmp:
        if null_class(model) is None and vae is None:
            DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        elif null_class(model) is None:
            # LDMPipeline types its vqvae as a VQModel, but only calls decode(latents).sample on it,
            # which an AutoencoderKL answers the same way
            LDMPipeline(vqvae=vae, unet=model, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        else:
            ClassConditionalDDPMPipeline(unet=model, scheduler=scheduler, vae=vae).save_pretrained(
                tmp, safe_serialization=True)
            shutil.copyfile(class_pipeline.__file__, tmp / "pipeline.py")
            # diffusers' custom-pipeline form: [module file in the folder, class name]
            index = tmp / "model_index.json"
            config = json.loads(index.read_text())
            config["_class_name"] = ["pipeline", ClassConditionalDDPMPipeline.__name__]
            index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_run(run_dir: Path) -> tuple[Path, str]:
    """RUN/pipeline written from the run's trained weights (its finished model, else its newest
    checkpoint) with its model card; returns the folder and where the weights came from, in words."""
    run, recipe = RunDir.open(run_dir)
    if training_noise_scheduler(recipe) is None:
        raise InputError(f"{run.path}: a {recipe.schedule.kind}-schedule run has no diffusers pipeline; "
                         f"only schedule.kind = 'ddpm' runs (a UNet2DModel) export one")
    run.lock(flag="difflab export")  # not while another process trains it
    try:
        setup = run_setup(run.path, [], "cpu")
        save_pipeline(setup.model, setup.train_scheduler, run.pipeline_dir, setup.codec)
        write_model_card(run, recipe, str(run.pipeline_dir))
    finally:
        run.release()
    return run.pipeline_dir, setup.weights


def evaluate(ctx: JobContext, setup: SamplingSetup, recipe: Recipe, data: ImageDataset) -> dict:
    """The samples' quality against the dataset's reference classifier (recipe [eval])."""
    if not recipe.eval.enabled:
        return {"eval_skipped": "eval.enabled = false"}
    return measure_model(setup, data, recipe.eval.num_samples, job_logger(ctx))


def measure_guidance(ctx: JobContext, setup: SamplingSetup, recipe: Recipe, final_images) -> dict:
    """[guidance]: its loss on the final samples, and on the same noise without it (summary `guidance`)."""
    g, s = recipe.guidance, recipe.sample
    effect = guidance_effect(setup, final_images, s.steps)
    if effect is None:
        return {}
    ctx.emit(events.LogLine(ctx.job_id, f"guidance ({g.function}) loss on {s.num_images} samples: "
                                        f"{effect['loss_unguided']:.4g} at scale 0, "
                                        f"{effect['loss_guided']:.4g} at scale {g.scale:g}"))
    return {"guidance": effect}


def invert(ctx: JobContext, setup: SamplingSetup, recipe: Recipe, data: ImageDataset, run: RunDir,
           recipe_dir: Path | None) -> dict:
    """The recipe's [invert]: DDIM inversion of its images with the model just trained (RUN/inversion)."""
    cfg = recipe.invert
    if not cfg.enabled:
        return {}
    guidance = setup.guidance() if cfg.edit_loss_guidance else None
    ctx.emit(events.LogLine(ctx.job_id, f"DDIM inversion of {len(cfg.images) + len(cfg.image_paths)} "
                                        f"images, {cfg.steps} steps"))
    table = run_inversion(setup, cfg, inversion_inputs(cfg, data, setup, recipe_dir), run.path / "inversion",
                          guidance=guidance)
    log_errors(ctx, table)
    return {"invert": table}
