"""Loading trained models to sample from: a run's exported model, one of its checkpoints
(with its EMA weights, LoRA merged in), or any saved DDPM-style diffusers pipeline (a latent
one with its VAE: an LDMPipeline holding an AutoencoderKL, or a class-conditional latent run's).

Each loader returns a SamplingSetup (generate.py): the model with the recipe it was
trained with, so the sampler, the schedule and the data's shape carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DModel

from difflab.diffusion.checkpoints import load_checkpoint
from difflab.diffusion.generate import SamplingSetup
from difflab.diffusion.hub import cache_then_hub
from difflab.diffusion.latents import VAE_FOLDERS, LatentCodec, downscale, latent_shape, open_codec
from difflab.diffusion.lora import add_lora, merged_state_dict
from difflab.diffusion.models import BasicUNet, build_model
from difflab.diffusion.schedules import training_noise_scheduler
from difflab.errors import InputError, reason
from difflab.recipe import VALUE_RANGES, Recipe, parse_with_overrides
from difflab.runtime.runs import RunDir


def run_setup(run_dir: Path, overrides: list[str], device: str):
    """Sampling setup for a run directory: a finished run's model/ folder, else (a stopped, failed
    or still running run) its newest checkpoint; `setup.weights` says which."""
    run, recipe = run_recipe(run_dir, overrides)
    model, weights = _load_run_model(run, recipe)
    setup = setup_for(model, recipe, device, run_vae(run, recipe, device))
    setup.data_dir = Path(run_dir)  # as `difflab eval` reads the run's data
    setup.weights = weights
    return setup


def run_recipe(run_dir: Path, overrides: list[str]) -> tuple[RunDir, Recipe]:
    """A run's recipe with `key=value` overrides applied and validated. A latent run's latent.vae
    is its own copy (RUN/vae), wherever the VAE first came from."""
    run, recipe = RunDir.open(run_dir)
    data = recipe.model_dump(mode="json")
    if recipe.latent.vae:
        data["latent"]["vae"] = str(run.vae_dir.resolve())
    return run, parse_with_overrides(data, overrides, str(run.recipe_path))


def run_vae(run: RunDir, recipe: Recipe, device: str) -> LatentCodec | None:
    """A latent run's VAE (its RUN/vae), or None for a pixel-space run."""
    if not recipe.latent.vae:
        return None
    if not (run.vae_dir / "config.json").is_file():
        raise InputError(f"{run.path}: a latent run (latent.vae) without its vae/ folder; it cannot decode "
                         f"its samples. Train it again, or copy the VAE it used into {run.vae_dir}")
    return open_codec(recipe, run.vae_dir, device)


def setup_for(model: torch.nn.Module, recipe: Recipe, device: str, codec: LatentCodec | None = None):
    """Everything sampling needs, for a model trained with `recipe` (a latent model: with its VAE)."""
    d = recipe.dataset
    shape = (d.channels, d.image_size, d.image_size)
    if codec is not None:
        shape = latent_shape(codec.vae.config, recipe, recipe.latent.vae)
    return SamplingSetup(model.to(device), recipe, shape, VALUE_RANGES[d.value_range], device,
                         training_noise_scheduler(recipe), codec=codec)


def _load_run_model(run: RunDir, recipe: Recipe) -> tuple[torch.nn.Module, str]:
    """The run's model and where its weights came from, in words."""
    if (run.model_dir / "config.json").is_file():
        return load_model_folder(run.model_dir, recipe.model.kind, str(run.model_dir)), "the finished model"
    checkpoints = run.list_checkpoints()
    if not checkpoints:
        raise InputError(f"{run.path}: no trained model yet: the run has not finished and has no checkpoint; "
                         f"continue it with c on the lab's Train screen (4), or `difflab run --resume {run.path}`")
    newest = checkpoints[-1]
    step = int(newest.name.removeprefix("step_"))
    return checkpoint_model(newest, recipe), f"the step {step} checkpoint (the run has not finished)"


def load_model_folder(folder: Path, kind: str, what: str):
    """A model saved with save_pretrained: BasicUNet or UNet2DModel by the recipe's model.kind."""
    cls = BasicUNet if kind == "basic-unet" else UNet2DModel
    try:
        return cls.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{what}: cannot load the model in {folder} ({reason(error)})") from None


def checkpoint_model(folder: Path, recipe: Recipe | None = None):
    """The network of RUN/checkpoints/step_N (with its EMA weights when the run kept an EMA).

    `recipe` defaults to the run's own; a LoRA run's checkpoint holds its adapters too.
    """
    if recipe is None:
        _, recipe = run_recipe(folder.parent.parent, [])
    checkpoint = load_checkpoint(folder)
    model = build_model(recipe)
    if recipe.train.lora_rank:
        add_lora(model, recipe.train)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        raise InputError(f"{folder}: the checkpoint does not fit its run's recipe "
                         f"({reason(error)})") from None
    for i, parameter in enumerate(model.parameters()):
        if (ema := checkpoint.tensors.get(f"ema.{i}")) is not None:
            parameter.data.copy_(ema)
    if recipe.train.lora_rank:
        plain = build_model(recipe)
        plain.load_state_dict(merged_state_dict(model))
        return plain
    return model


def pipeline_setup(source: str, overrides: list[str], device: str):
    """Sampling setup for any UNet2DModel pipeline (unconditional or class-conditional, in pixels or,
    with its VAE, in latents) on disk or on the hub."""
    parts = load_pipeline(source)
    cfg, scheduler = parts.unet.config, parts.scheduler
    prediction = scheduler.config.get("prediction_type", "epsilon")
    objective = {"sample": "x0"}.get(prediction, prediction)
    size = _size(cfg.sample_size)
    data = {
        "schedule": {"kind": "ddpm", "num_train_timesteps": scheduler.config.num_train_timesteps,
                     "beta_schedule": scheduler.config.beta_schedule,
                     "beta_start": scheduler.config.beta_start, "beta_end": scheduler.config.beta_end},
        "dataset": {"image_size": size, "channels": cfg.in_channels, "value_range": "-1..1"},
        "model": {"kind": "unet2d", "block_out_channels": list(cfg.block_out_channels),
                  "down_block_types": list(cfg.down_block_types), "up_block_types": list(cfg.up_block_types),
                  "layers_per_block": cfg.layers_per_block, "norm_num_groups": cfg.norm_num_groups,
                  "num_classes": (cfg.num_class_embeds or 1) - 1},  # the last embedding is "no class"
        "train": {"objective": objective},
        "sample": {"sampler": "ddim", "steps": 50},
    }
    if parts.vae is not None:  # the images are the VAE's: its channels, the latent's size times its downscale
        vae = parts.vae.config
        data["dataset"].update(image_size=size * downscale(vae), channels=vae.in_channels)
        data["latent"] = {"vae": source, "scaling_factor": vae.scaling_factor}
    recipe = parse_with_overrides(data, overrides, f"{source} (pipeline)")
    if recipe.train.objective != objective:
        raise InputError(f"train.objective = '{recipe.train.objective}': the pipeline's scheduler predicts "
                         f"'{prediction}'; a sampler must use the pipeline's own prediction type")
    codec = None
    if parts.vae is not None:
        codec = LatentCodec(parts.vae.to(device).eval(), recipe.latent.scaling_factor, (-1.0, 1.0),
                            f"{source} (the pipeline's VAE)")
    shape = (cfg.in_channels, size, size)
    return SamplingSetup(parts.unet.to(device), recipe, shape, (-1.0, 1.0), device, scheduler, codec=codec)


def _size(sample_size) -> int:
    return sample_size if isinstance(sample_size, int) else int(sample_size[0])


@dataclass
class PipelineParts:
    """What difflab samples from a DDPM-style pipeline: its UNet and scheduler, and a latent
    pipeline's VAE (an LDMPipeline's vqvae, a class-conditional latent pipeline's vae)."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    vae: AutoencoderKL | None = None


def load_pipeline(source: str, what: str | None = None) -> PipelineParts:
    """The parts of a DDPM-style pipeline (class-conditional and latent ones too): a local folder,
    else a hub id (cache first).

    `what` names the setting in errors (default: the --pipeline flag).
    """
    what = what or f"--pipeline {source}"
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InputError(f"{what}: not a diffusers pipeline folder (no model_index.json)")
        try:
            return _parts(path, what)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"{what}: cannot load its UNet2DModel and scheduler ({reason(error)})") from None
    return cache_then_hub(lambda **options: _parts(source, what, **options), what)


def _parts(source, what: str, **options) -> PipelineParts:
    """The pipeline's parts, read as data: a class-conditional run's pipeline.py is never run."""
    index = DiffusionPipeline.load_config(source, **options)  # model_index.json
    unet = UNet2DModel.from_pretrained(source, subfolder="unet", **options)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **options)
    vaes = [(name, kind) for name in VAE_FOLDERS if (kind := _component_class(index, name))]
    if not vaes:
        return PipelineParts(unet, scheduler)
    name, kind = vaes[0]
    if kind != "AutoencoderKL":
        raise InputError(f"{what}: its {name} is a {kind}; difflab's latent models decode with an AutoencoderKL "
                         f"(Stable Diffusion's kind of VAE)")
    return PipelineParts(unet, scheduler, AutoencoderKL.from_pretrained(source, subfolder=name, **options))


def _component_class(index: dict, name: str) -> str | None:
    """The class model_index.json names for a component (["diffusers", "AutoencoderKL"]), or None."""
    entry = index.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


def checkpoint_setup(folder: Path, overrides: list[str], device: str):
    """Sampling setup for RUN/checkpoints/step_N: the run's recipe, the checkpoint's weights.

    A run that kept an EMA samples with the EMA weights, as its exported model does.
    """
    run, recipe = run_recipe(folder.parent.parent, overrides)
    return setup_for(checkpoint_model(folder, recipe), recipe, device, run_vae(run, recipe, device))
