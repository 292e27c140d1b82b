"""One training session's state: the model, optimizer, schedules, EMA, generator and counters,
built from a recipe, saved to and restored from checkpoints (exactly), and summarised.
training.py runs the loop over it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from difflab.diffusion.checkpoints import (
    Checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from difflab.diffusion.finetune import load_initial_weights
from difflab.diffusion.generate import SamplingSetup
from difflab.diffusion.latents import LatentCodec
from difflab.diffusion.lora import add_lora
from difflab.diffusion.models import build_model, check_input_fits, count_parameters
from difflab.diffusion.objectives import make_objective
from difflab.diffusion.schedules import training_noise_scheduler
from difflab.errors import InputError, JobFailed, reason
from difflab.jobs.devices import check_precision
from difflab.jobs.expectations import loss_drop_factor
from difflab.jobs.meters import DivergenceWatch, LossMeter, NoiseLevelMeter, TrainingState
from difflab.jobs.tracking import accelerator_options, start_tracking
from difflab.recipe import Recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.versions import versions
from difflab.runtime.worker import JobContext


class TrainingSession:
    """One training session of a job: model, optimizer, schedules, EMA, RNG and counters."""

    def __init__(self, ctx: JobContext, recipe: Recipe, run: RunDir, recipe_dir: Path | None, resume: bool,
                 data, accelerator: Accelerator, pixels=None, codec: LatentCodec | None = None) -> None:
        self.ctx, self.recipe, self.run = ctx, recipe, run
        self.recipe_dir, self.resume = recipe_dir, resume
        self.accelerator = accelerator
        self.device = str(accelerator.device)
        self.data = _resident(data, self.device)  # what the model trains on: images, or a latent run's latents
        self.pixels = data if pixels is None else pixels  # the images (evaluation and inversion read them)
        self.codec = codec  # a latent run's VAE
        self.cfg = self.recipe.train  # the loop replaces it when a person adjusts a setting
        self.main = accelerator.is_main_process
        self.global_batch = self.cfg.batch_size * self.cfg.gradient_accumulation * accelerator.num_processes
        # Several processes must all take the same number of micro-batches, so they drop the tail.
        per_epoch = len(data) / self.global_batch
        self.steps_per_epoch = max(1, math.floor(per_epoch) if accelerator.num_processes > 1 else math.ceil(per_epoch))
        total = self.cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, self.cfg.max_steps) if self.cfg.max_steps else total
        self.state = TrainingState()
        self.meter = LossMeter.zeros(self.device)
        self.levels = NoiseLevelMeter(self.device)
        self.watch = DivergenceWatch(self.device)
        self._saved_step = -1  # the step of the last checkpoint this session wrote
        # Tensor-core convolutions on a GPU read NHWC; under autocast that layout is the fast one.
        fast_layout = self.device.startswith("cuda") and self.cfg.mixed_precision != "no"
        self.memory_format = torch.channels_last if fast_layout else torch.contiguous_format
        self._clock = time.perf_counter()  # the loop restarts it: elapsed counts training time

    @classmethod
    def start(cls, ctx: JobContext, recipe: Recipe, run: RunDir, recipe_dir: Path | None, resume: bool, data,
              pixels=None, codec: LatentCodec | None = None):
        """Build the model, optimizer, schedules and EMA; restore the last checkpoint on a resume."""
        check_precision(recipe.train.mixed_precision, ctx.device)
        accelerator = _accelerator(recipe, ctx.device, run.logs)
        session = cls(ctx, recipe, run, recipe_dir, resume, data, accelerator, pixels, codec)
        cfg = recipe.train
        torch.manual_seed(recipe.seed)  # weight initialisation
        model = build_model(recipe, recipe_dir)
        check_input_fits(model, tuple(data.images.shape[1:]), recipe)
        _check_labels(recipe, data)
        session.prepare_model(model)
        model.to(memory_format=session.memory_format)
        optimizer = _optimizer(recipe, model, session.device)
        session.lr_scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                             num_training_steps=session.total_steps)
        session.model, session.optimizer = accelerator.prepare(model, optimizer)
        session.noise_scheduler = training_noise_scheduler(recipe)
        session.objective = make_objective(recipe, data.value_range, session.noise_scheduler)
        session.ema = _ema(recipe, session.unwrapped)
        # One generator for every random draw of the loop (noise, timesteps, flips): its
        # state goes into checkpoints, which is what makes resume exact.
        session.generator = torch.Generator(device=session.device).manual_seed(
            recipe.seed + 1 + accelerator.process_index)
        if resume:
            session.restore(load_latest_checkpoint(run))
        start_tracking(accelerator, recipe, run.logs, session.state.step)
        return session

    def prepare_model(self, model) -> None:
        """Start from train.init_from's weights (a fresh run only: a resume restores its own), add LoRA."""
        log = lambda text: self.ctx.emit(events.LogLine(self.ctx.job_id, text))
        if self.cfg.init_from and not self.resume:
            log(load_initial_weights(model, self.recipe, self.recipe_dir))
        if self.cfg.lora_rank:
            log(add_lora(model, self.cfg).line(self.cfg.lora_rank))

    @property
    def unwrapped(self):
        """The bare model: no DDP, no torch.compile wrapper, so checkpoints are the same either way."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def elapsed(self) -> float:
        """Seconds of training over the whole run, earlier sessions included."""
        return self.state.elapsed + time.perf_counter() - self._clock

    # ------------------------------------------------------------ sampling the model

    def sampling_setup(self) -> SamplingSetup:
        return SamplingSetup(self.unwrapped, self.recipe, tuple(self.data.images.shape[1:]),
                             self.data.value_range, self.device, self.noise_scheduler,
                             data_dir=self.recipe_dir, codec=self.codec)

    @contextlib.contextmanager
    def sampling_weights(self):
        """Sample with the EMA weights when there are any (as diffusers' training example does)."""
        params = list(self.unwrapped.parameters())
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            yield
        finally:
            if self.ema is not None:
                self.ema.restore(params)
            self.model.train()

    # ------------------------------------------------------------ checkpoints

    def check_finite(self, weights: bool = False) -> None:
        """Fail the job, naming the newest good checkpoint, once any step's loss (or, asked, a weight)
        was not finite. Called at log lines and before every checkpoint: a sync each, never per step."""
        bad_step = self.watch.first_bad_step()
        if bad_step is None and weights and not _all_finite(self.unwrapped.parameters()):
            bad_step = self.state.step
        if bad_step is not None:
            raise JobFailed(divergence_message(self.recipe, self.cfg, bad_step, self.run.list_checkpoints()))

    def checkpoint(self) -> None:
        """Save all a resume needs to carry on exactly: weights, optimizer, schedules, EMA, RNG, meters.
        Only a good one: a run whose loss or weights went non-finite fails here instead."""
        if not self.main or self._saved_step == self.state.step:  # a stop right after a periodic one
            return
        self.check_finite(weights=True)
        state, meter = self.state, self.meter
        tensors = {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                   "log_sum": meter.log_sum, "epoch_sum": meter.epoch_sum}
        counters = {"elapsed": self.elapsed(), "epoch_losses": state.epoch_losses, "log_count": meter.log_count,
                    "epoch_count": meter.epoch_count, "last_loss": state.last_loss}
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            tensors.update({f"ema.{i}": p for i, p in enumerate(ema_state.pop("shadow_params"))})
            counters["ema"] = ema_state
        extra = {"lr_scheduler": self.lr_scheduler.state_dict()}
        if self.accelerator.scaler is not None:
            extra["grad_scaler"] = self.accelerator.scaler.state_dict()
        checkpoint = Checkpoint(step=state.step, model=self.unwrapped.state_dict(),
                                optimizer={"optimizer": self.optimizer.state_dict(), **extra},
                                tensors=tensors, counters=counters)
        path = save_checkpoint(self.run, checkpoint, self.cfg.keep_checkpoints)
        self._saved_step = state.step
        self.ctx.emit(events.CheckpointSaved(self.ctx.job_id, state.step, path))

    def restore(self, checkpoint: Checkpoint) -> None:
        """Carry on from `checkpoint` (one this recipe's model wrote), metrics.jsonl cut back to its step."""
        try:
            self.unwrapped.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer["optimizer"])
            self.lr_scheduler.load_state_dict(checkpoint.optimizer["lr_scheduler"])
            if "grad_scaler" in checkpoint.optimizer and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(checkpoint.optimizer["grad_scaler"])
            self._restore_ema(checkpoint)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{self.run.checkpoints}: checkpoint step {checkpoint.step} does not match "
                             f"this recipe's model ({reason(error)})") from None
        tensors, counters = checkpoint.tensors, checkpoint.counters
        self.generator.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])  # dropout draws from the global generator
        self.meter = LossMeter(tensors["log_sum"].to(self.device), counters["log_count"],
                               tensors["epoch_sum"].to(self.device), counters["epoch_count"])
        self.state = TrainingState(checkpoint.step, counters["elapsed"], list(counters["epoch_losses"]),
                                   counters.get("last_loss"))
        if self.main:
            self.run.truncate_metrics(checkpoint.step)
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"resumed from step {checkpoint.step}"))

    def _restore_ema(self, checkpoint: Checkpoint) -> None:
        if self.ema is None:
            return
        state = dict(checkpoint.counters["ema"])
        count = sum(1 for key in checkpoint.tensors if key.startswith("ema."))
        state["shadow_params"] = [checkpoint.tensors[f"ema.{i}"].to(self.device) for i in range(count)]
        self.ema.load_state_dict(state)

    # ------------------------------------------------------------ summary

    def summary(self, status: str) -> dict:
        """summary.json's fields that describe the session (a finished run adds after_training's)."""
        return {
            "status": status, "job": "train", "run_dir": str(self.run.path), "device": self.device,
            "processes": self.accelerator.num_processes, "mixed_precision": self.cfg.mixed_precision,
            "dataset": self.data.name, "dataset_size": len(self.data),
            "model": self.recipe.model.kind, "parameters": count_parameters(self.unwrapped),
            "trainable_parameters": count_parameters(self.unwrapped, trainable_only=True),
            "init_from": self.cfg.init_from or None, "lora_rank": self.cfg.lora_rank or None,
            "class_names": self.data.class_names if self.recipe.model.num_classes else None,
            "steps": self.state.step, "total_steps": self.total_steps,
            "epochs_completed": len(self.state.epoch_losses), "epoch_losses": self.state.epoch_losses,
            "final_loss": self.state.last_loss,
            "loss_drop_factor": loss_drop_factor([row["loss"] for row in self.run.read_metrics()]),
            "elapsed_s": round(self.elapsed(), 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "samples": str(self.run.samples / "final.png") if status == "finished" else None,
        }


def divergence_message(recipe: Recipe, cfg, bad_step: int, checkpoints: list[Path]) -> str:
    """Why a run diverged, as far as its recipe tells, and where a resume can start."""
    schedule = recipe.schedule
    if schedule.kind == "ddpm" and max(schedule.beta_start, schedule.beta_end) > 0.1:
        # The course's betas run 1e-4..0.02; far stronger noise swamps the signal in a few steps.
        hint = (f"schedule.beta_start = {schedule.beta_start} and beta_end = {schedule.beta_end} are far above "
                f"the course's 0.0001 and 0.02; try those")
    elif cfg.mixed_precision == "fp16":
        hint = "fp16 overflows where bf16 does not; try train.mixed_precision = 'bf16'"
    else:
        hint = f"Try a lower train.lr (now {cfg.lr}) or train.max_grad_norm = 1.0"
    where = (f"the newest good checkpoint is {checkpoints[-1]}: resume from it after changing the recipe"
             if checkpoints else "no checkpoint was written before it")
    return f"loss became non-finite at step {bad_step}; the model diverged. {hint}. Nothing bad was saved: {where}"


def _all_finite(parameters) -> bool:
    flags = [torch.isfinite(p.detach()).all() for p in parameters]
    return bool(torch.stack(flags).all()) if flags else True


def _resident(data, device: str):
    """Keep the decoded dataset on the device when it comfortably fits, else on the CPU."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return data.to(device) if data.images.numel() * 4 < free // 4 else data
    return data if device == "cpu" else data.to(device)


def _accelerator(recipe: Recipe, device: str, logs: Path) -> Accelerator:
    """An Accelerator for this job: the worker's device, the recipe's precision and tracker (train.log_with)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one process-wide state; a long-lived lab runs many jobs with
        # different devices and precisions, so a single-process job starts it afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=recipe.train.mixed_precision,
                       dynamo_backend="inductor" if recipe.train.compile else "no",
                       **accelerator_options(recipe, logs))


def _optimizer(recipe: Recipe, model: torch.nn.Module, device: str) -> torch.optim.Optimizer:
    cfg = recipe.train
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    # One fused kernel per step on CUDA (and its step counts stay on the device: no host reads).
    fused = {"fused": True} if device.startswith("cuda") else {}
    return kind(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def _check_labels(recipe: Recipe, data) -> None:
    """A class-conditional recipe needs a labelled dataset whose classes fit model.num_classes."""
    classes = recipe.model.num_classes
    if not classes:
        return
    labelled = data.labels[data.labels >= 0]
    if not len(labelled):
        raise InputError(f"model.num_classes = {classes}: dataset '{data.name}' has no labels (an image folder "
                         f"needs one subfolder per class)")
    if int(labelled.max()) >= classes:
        raise InputError(f"model.num_classes = {classes}: dataset '{data.name}' has {len(data.class_names)} "
                         f"classes ({', '.join(data.class_names[:12])}); set model.num_classes = "
                         f"{len(data.class_names)}")


def _ema(recipe: Recipe, model) -> EMAModel | None:
    if not recipe.train.ema:
        return None
    # warm-up (decay grows from 0 toward ema_decay) as in diffusers' unconditional example
    return EMAModel(model.parameters(), decay=recipe.train.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                    power=3 / 4, model_cls=type(model), model_config=model.config)
