"""The sampling job: generate from a run directory or any saved diffusers pipeline.

A run directory brings its recipe (schedule, data shape, sampler settings); a
pipeline brings its UNet and scheduler config, from which a sampling recipe is
made. Either way sampling goes through generate.py on the worker, with throttled
progress events, and writes a grid, the step-by-step figure and the GIF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.runtime import events
from difflab.errors import InputError
from difflab.recipe import Recipe, parse_recipe
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext


@dataclass
class SampleSource:
    """Where the model comes from: a run directory, or a pipeline path / hub id."""

    run_dir: Path | None = None
    pipeline: str | None = None

    @classmethod
    def of_folder(cls, folder: Path) -> SampleSource:
        """A pipeline when the folder holds model_index.json, else a run or one of its checkpoints."""
        from difflab.runtime.runs import source_kind

        return cls(pipeline=str(folder)) if source_kind(folder) == "pipeline" else cls(run_dir=folder)


class SampleJob:
    """Sample `recipe.sample` from a source into an output folder."""

    name = "sample"

    def __init__(self, source: SampleSource, out: Path, overrides: list[str] = (), device: str = "auto") -> None:
        self.source, self.out, self.overrides, self.device = source, Path(out), list(overrides), device

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        from difflab.diffusion.generate import write_samples

        setup = self._setup(ctx.device)
        s = setup.recipe.sample
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, s.steps, 0, self.out))
        started = time.perf_counter()
        stem = f"{s.sampler}-{s.steps}steps-seed{s.seed}-"
        setup.progress = SamplingProgress(ctx, s.steps)
        grid, _ = write_samples(setup, self.out, stem)
        path = self.out / f"{stem}final.png"
        ctx.emit(events.PreviewReady(ctx.job_id, s.steps, grid, path))
        return "finished", {"status": "finished", "job": "sample", "samples": str(path), "sampler": s.sampler,
                            "steps": s.steps, "seed": s.seed, "elapsed_s": round(time.perf_counter() - started, 3)}

    def _setup(self, device: str):
        if self.source.pipeline:
            return pipeline_setup(self.source.pipeline, self.overrides, device)
        return run_setup(Path(self.source.run_dir), self.overrides, device)


class SamplingProgress:
    """A sampler callback emitting throttled Progress; model calls are mapped onto `steps`.

    `offset` places this sampler's steps within a job that runs several (Heun, for one,
    calls the model 2*steps-1 times for `steps` steps).
    """

    def __init__(self, ctx: JobContext, steps: int, total: int | None = None, offset: int = 0) -> None:
        self.ctx, self.steps, self.total, self.offset = ctx, steps, total or steps, offset
        self.last = 0.0

    def __call__(self, step) -> None:
        now = time.perf_counter()
        if now - self.last >= events.PROGRESS_INTERVAL_S or step.index + 1 == step.total:
            self.last = now
            done = self.offset + round((step.index + 1) * self.steps / step.total)
            self.ctx.emit(events.Progress(self.ctx.job_id, done, self.total, None))


def run_setup(run_dir: Path, overrides: list[str], device: str):
    """Sampling setup for a finished run directory (its model/ folder)."""
    run, recipe = run_recipe(run_dir, overrides)
    setup = setup_for(_load_run_model(run, recipe), recipe, device)
    setup.data_dir = Path(run_dir)  # as `difflab eval` reads the run's data
    return setup


def run_recipe(run_dir: Path, overrides: list[str]) -> tuple[RunDir, Recipe]:
    """A run's recipe with `key=value` overrides applied and validated."""
    from difflab.recipe import apply_overrides

    run, recipe = RunDir.open(run_dir)
    data = recipe.model_dump(mode="json")
    apply_overrides(data, overrides, str(run.recipe_path))
    return run, parse_recipe(data, str(run.recipe_path))


def setup_for(model: torch.nn.Module, recipe: Recipe, device: str):
    """Everything sampling needs, for a model trained with `recipe`."""
    from difflab.diffusion.generate import SamplingSetup
    from difflab.recipe import VALUE_RANGES
    from difflab.diffusion.schedules import training_noise_scheduler

    shape = (recipe.dataset.channels, recipe.dataset.image_size, recipe.dataset.image_size)
    return SamplingSetup(model.to(device), recipe, shape, VALUE_RANGES[recipe.dataset.value_range], device,
                         training_noise_scheduler(recipe))


def _load_run_model(run: RunDir, recipe: Recipe):
    if not (run.model_dir / "config.json").is_file():
        raise InputError(f"{run.model_dir}: no trained model yet (the run has not finished; "
                         f"resume it with `difflab run --resume {run.path}`)")
    return load_model_folder(run.model_dir, recipe.model.kind, str(run.model_dir))


def load_model_folder(folder: Path, kind: str, what: str):
    """A model saved with save_pretrained: BasicUNet or UNet2DModel by the recipe's model.kind."""
    from diffusers import UNet2DModel

    from difflab.diffusion.models import BasicUNet

    cls = BasicUNet if kind == "basic-unet" else UNet2DModel
    try:
        return cls.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{what}: cannot load the model in {folder} ({str(error).splitlines()[0]})") from None


def checkpoint_model(folder: Path, recipe: Recipe | None = None):
    """The network of RUN/checkpoints/step_N (with its EMA weights when the run kept an EMA).

    `recipe` defaults to the run's own; a LoRA run's checkpoint holds its adapters too.
    """
    from difflab.diffusion.models import build_model
    from difflab.diffusion.checkpoints import load_checkpoint

    if recipe is None:
        _, recipe = RunDir.open(folder.parent.parent)
    checkpoint = load_checkpoint(folder)
    model = build_model(recipe)
    if recipe.train.lora_rank:
        from difflab.diffusion.finetune import add_lora

        add_lora(model, recipe.train)
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        raise InputError(f"{folder}: the checkpoint does not fit its run's recipe "
                         f"({str(error).splitlines()[0]})") from None
    for i, parameter in enumerate(model.parameters()):
        if (ema := checkpoint.tensors.get(f"ema.{i}")) is not None:
            parameter.data.copy_(ema)
    if recipe.train.lora_rank:
        from difflab.diffusion.finetune import merged_state_dict

        plain = build_model(recipe)
        plain.load_state_dict(merged_state_dict(model))
        return plain
    return model


def pipeline_setup(source: str, overrides: list[str], device: str):
    """Sampling setup for any unconditional UNet2DModel pipeline on disk or on the hub."""
    from difflab.diffusion.generate import SamplingSetup
    from difflab.recipe import apply_overrides

    unet, scheduler = load_pipeline(source)
    cfg = unet.config
    prediction = scheduler.config.get("prediction_type", "epsilon")
    objective = {"sample": "x0"}.get(prediction, prediction)
    data = {
        "schedule": {"kind": "ddpm", "num_train_timesteps": scheduler.config.num_train_timesteps,
                     "beta_schedule": scheduler.config.beta_schedule,
                     "beta_start": scheduler.config.beta_start, "beta_end": scheduler.config.beta_end},
        "dataset": {"image_size": _size(cfg.sample_size), "channels": cfg.in_channels, "value_range": "-1..1"},
        "model": {"kind": "unet2d", "block_out_channels": list(cfg.block_out_channels),
                  "down_block_types": list(cfg.down_block_types), "up_block_types": list(cfg.up_block_types),
                  "layers_per_block": cfg.layers_per_block, "norm_num_groups": cfg.norm_num_groups},
        "train": {"objective": objective},
        "sample": {"sampler": "ddim", "steps": 50},
    }
    apply_overrides(data, overrides, source)
    recipe = parse_recipe(data, f"{source} (pipeline)")
    if recipe.train.objective != objective:
        raise InputError(f"train.objective = '{recipe.train.objective}': the pipeline's scheduler predicts "
                         f"'{prediction}'; a sampler must use the pipeline's own prediction type")
    shape = (cfg.in_channels, recipe.dataset.image_size, recipe.dataset.image_size)
    return SamplingSetup(unet.to(device), recipe, shape, (-1.0, 1.0), device, scheduler)


def _size(sample_size) -> int:
    return sample_size if isinstance(sample_size, int) else int(sample_size[0])


def load_pipeline(source: str, what: str | None = None):
    """(unet, scheduler) of a DDPM-style pipeline: a local folder, else a hub id (cache first).

    `what` names the setting in errors (default: the --pipeline flag).
    """
    from diffusers import DDPMPipeline

    what = what or f"--pipeline {source}"
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InputError(f"{what}: not a diffusers pipeline folder (no model_index.json)")
        try:
            pipe = DDPMPipeline.from_pretrained(path)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"{what}: cannot load it as an unconditional pipeline "
                             f"({str(error).splitlines()[0]})") from None
        return pipe.unet, pipe.scheduler
    return _from_hub(source, what)


def _from_hub(hub_id: str, what: str):
    from diffusers import DDPMPipeline

    try:
        pipe = DDPMPipeline.from_pretrained(hub_id, local_files_only=True)
        return pipe.unet, pipe.scheduler
    except (OSError, ValueError):
        pass  # not cached: try the network below
    try:
        pipe = DDPMPipeline.from_pretrained(hub_id)
    except (OSError, ValueError) as error:
        raise InputError(f"{what}: not a local folder, not in the Hugging Face cache, and the hub "
                         f"could not be reached or has no such pipeline ({str(error).splitlines()[0]}). "
                         f"Offline, download it elsewhere and copy the folder here.") from None
    return pipe.unet, pipe.scheduler
