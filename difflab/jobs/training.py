"""The training job: one loop for the toy and the DDPM chapters, emitting events as it goes.

Per optimizer step: take micro-batches from the resident dataset, compute the
objective's loss (objectives.py), backward through Accelerate (mixed precision,
several GPUs under `accelerate launch`), clip, step the optimizer and the
learning-rate schedule, update the EMA. The loss is accumulated on the device
and read back only at log intervals, so a CUDA run never waits on the host each
step. Between steps the job consults its JobControl (pause, stop, single step).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.diffusion.checkpoints import Checkpoint, load_latest_checkpoint, save_checkpoint
from difflab.runtime import events
from difflab.errors import InputError, JobFailed
from difflab.jobs.expectations import as_records, check_expectations, loss_drop_factor
from difflab.diffusion.models import count_parameters
from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext



@dataclass
class TrainingState:
    """Where training stands: counters that a checkpoint saves and a resume restores."""

    step: int = 0
    elapsed: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)


@dataclass
class LossMeter:
    """Sums of per-step losses kept on the device; read back only when asked."""

    log_sum: torch.Tensor
    log_count: int
    epoch_sum: torch.Tensor
    epoch_count: int

    @classmethod
    def zeros(cls, device: str) -> LossMeter:
        return cls(torch.zeros((), device=device), 0, torch.zeros((), device=device), 0)

    def add(self, loss: torch.Tensor) -> None:
        self.log_sum += loss.detach()
        self.epoch_sum += loss.detach()
        self.log_count += 1
        self.epoch_count += 1

    def take_log_mean(self, reduce=lambda t: t) -> float:
        mean = reduce(self.log_sum / max(self.log_count, 1)).item()  # the one host sync per log interval
        self.log_sum.zero_()
        self.log_count = 0
        return mean

    def take_epoch_mean(self, reduce=lambda t: t) -> float:
        mean = reduce(self.epoch_sum / max(self.epoch_count, 1)).item()
        self.epoch_sum.zero_()
        self.epoch_count = 0
        return mean


class NoiseLevelMeter:
    """Per-image losses summed into noise-level buckets on the device; read at log intervals."""

    BUCKETS = 10

    def __init__(self, device: str) -> None:
        self.sums = torch.zeros(self.BUCKETS, device=device)
        self.counts = torch.zeros(self.BUCKETS, device=device)

    def add(self, per_image: torch.Tensor, level: torch.Tensor) -> None:
        index = (level * self.BUCKETS).long().clamp(0, self.BUCKETS - 1)
        self.sums.index_add_(0, index, per_image.float())
        self.counts.index_add_(0, index, torch.ones_like(per_image, dtype=torch.float))

    def take(self) -> tuple[float | None, ...]:
        sums, counts = self.sums.tolist(), self.counts.tolist()
        self.sums.zero_()
        self.counts.zero_()
        return tuple(s / c if c else None for s, c in zip(sums, counts))


class TrainingJob:
    """Train the recipe's model into a run directory (fresh, or resumed from its last checkpoint)."""

    name = "train"

    def __init__(self, recipe: Recipe, run: RunDir, recipe_dir: Path | None = None,
                 resume: bool = False) -> None:
        self.recipe = recipe
        self.run_dir = run
        self.recipe_dir = recipe_dir
        self.resume = resume
        self.device = recipe.device

    # ------------------------------------------------------------ the job

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        from difflab.diffusion.data import load_dataset

        emit = ctx.emit
        emit(events.LogLine(ctx.job_id, f"loading dataset '{self.recipe.dataset.source}'"))
        data = load_dataset(self.recipe.dataset, self.recipe_dir, self.recipe.seed, self.recipe.audio)
        session = _Session.start(self, ctx, data)
        model = session.unwrapped
        emit(events.JobStarted(ctx.job_id, self.name, session.device, session.total_steps,
                               session.state.step, self.run_dir.path, count_parameters(model),
                               count_parameters(model, trainable_only=True)))
        try:
            stopped = session.loop()
        except torch.OutOfMemoryError as error:
            cfg = self.recipe.train
            raise JobFailed(
                f"out of memory on {session.device} at step {session.state.step} "
                f"({str(error).splitlines()[0]}). Try a smaller train.batch_size (now {cfg.batch_size}) with "
                f"train.gradient_accumulation = {cfg.gradient_accumulation * 2} to keep the effective batch, "
                f"or train.mixed_precision = 'bf16'") from None
        if stopped:
            session.checkpoint()
            summary = session.summary("stopped")
            self.run_dir.write_summary(summary)
            return "stopped", summary
        return "finished", session.finish()


def _resident(data, device: str):
    """Keep the decoded dataset on the device when it comfortably fits, else on the CPU."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return data.to(device) if data.images.numel() * 4 < free // 4 else data
    return data if device == "cpu" else data.to(device)


def _accelerator(recipe: Recipe, device: str):
    """An Accelerator for this job: the worker's device, the recipe's precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one process-wide state; a long-lived lab runs many jobs with
        # different devices and precisions, so a single-process job starts it afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=recipe.train.mixed_precision)


class _Session:
    """One training session of a job: model, optimizer, schedules, EMA, RNG and counters."""

    def __init__(self, job: TrainingJob, ctx: JobContext, data, accelerator) -> None:
        self.job, self.ctx, self.recipe = job, ctx, job.recipe
        self.accelerator = accelerator
        self.device = str(accelerator.device)
        self.data = _resident(data, self.device)
        self.run = job.run_dir
        self.cfg = self.recipe.train
        self.main = accelerator.is_main_process
        self.global_batch = self.cfg.batch_size * self.cfg.gradient_accumulation * accelerator.num_processes
        # Several processes must all take the same number of micro-batches, so they drop the tail.
        per_epoch = len(data) / self.global_batch
        self.steps_per_epoch = max(1, math.floor(per_epoch) if accelerator.num_processes > 1 else math.ceil(per_epoch))
        total = self.cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, self.cfg.max_steps) if self.cfg.max_steps else total
        self.state = TrainingState()
        self.meter = LossMeter.zeros(self.device)
        self.last_loss: float | None = None
        self.levels = NoiseLevelMeter(self.device)
        self._order_epoch = -1

    @classmethod
    def start(cls, job: TrainingJob, ctx: JobContext, data) -> _Session:
        from diffusers.optimization import get_scheduler

        from difflab.diffusion.models import build_model
        from difflab.diffusion.objectives import make_objective
        from difflab.diffusion.schedules import training_noise_scheduler

        accelerator = _accelerator(job.recipe, ctx.device)
        session = cls(job, ctx, data, accelerator)
        recipe, cfg = job.recipe, job.recipe.train
        torch.manual_seed(recipe.seed)  # weight initialisation
        model = build_model(recipe)
        _check_labels(recipe, data)
        session.prepare_model(model)
        optimizer = _optimizer(recipe, model)
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
        if job.resume:
            session.restore(load_latest_checkpoint(job.run_dir))
        return session

    def prepare_model(self, model) -> None:
        """Start from train.init_from's weights (a fresh run only: a resume restores its own), add LoRA."""
        from difflab.diffusion.finetune import add_lora, load_initial_weights

        log = lambda text: self.ctx.emit(events.LogLine(self.ctx.job_id, text))
        if self.cfg.init_from and not self.job.resume:
            log(load_initial_weights(model, self.recipe, self.job.recipe_dir))
        if self.cfg.lora_rank:
            log(add_lora(model, self.cfg).line(self.cfg.lora_rank))

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------ the loop

    def loop(self) -> bool:
        """Train until done; True when stopped early by the control."""
        control = self.ctx.control
        self._clock = time.perf_counter()
        self._last_progress = self._clock
        self._images_since_log = 0
        self._log_clock = self._clock
        self.model.train()
        while self.state.step < self.total_steps:
            if not control.wait_turn():
                return True
            self.apply(control.take_adjustments())
            epoch, position = divmod(self.state.step, self.steps_per_epoch)
            self.train_step(self.micro_batches(epoch, position))
            self.state.step += 1
            self.after_step(epoch, position)
        return False

    def micro_batches(self, epoch: int, position: int) -> list[torch.Tensor]:
        """This process's micro-batches for one optimizer step (the epoch's tail may be short)."""
        # Each epoch's order comes from (seed, epoch) alone, so a resumed run sees the same batches.
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.data), generator=generator)
            self._order_epoch = epoch
        size, acc = self.cfg.batch_size, self.accelerator
        first = position * self.cfg.gradient_accumulation
        starts = [((first + m) * acc.num_processes + acc.process_index) * size
                  for m in range(self.cfg.gradient_accumulation)]
        return [chunk for start in starts if len(chunk := self._order[start:start + size])]

    def train_step(self, micro_batches: list[torch.Tensor]) -> None:
        acc, gen = self.accelerator, self.generator
        total = torch.zeros((), device=self.device)
        for i, indices in enumerate(micro_batches):
            indices = indices.to(self.data.images.device)
            x = self.data.images[indices].to(self.device, non_blocking=True)
            labels = self.labels(indices)
            if self.recipe.dataset.flip:
                flip = torch.rand(len(x), generator=gen, device=self.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            last = i == len(micro_batches) - 1
            # no gradient all-reduce between processes until the last micro-batch
            with (contextlib.nullcontext() if last else acc.no_sync(self.model)), acc.autocast():
                batch = self.objective.loss(self.model, x, gen, labels)
            acc.backward(batch.loss / len(micro_batches))
            total += batch.loss.detach()
            self.levels.add(batch.per_image, batch.level)
            self._images_since_log += len(x)
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())
        self.meter.add(total / len(micro_batches))

    def labels(self, indices: torch.Tensor) -> torch.Tensor | None:
        """A class-conditional model's labels for a micro-batch, some dropped to "no class"."""
        classes = self.recipe.model.num_classes
        if not classes:
            return None
        from difflab.diffusion.conditioning import drop_labels

        labels = self.data.labels[indices].to(self.device, non_blocking=True)
        return drop_labels(labels, self.cfg.label_dropout, classes, self.generator)

    def after_step(self, epoch: int, position: int) -> None:
        step, cfg = self.state.step, self.cfg
        if step % cfg.log_every == 0 or step == self.total_steps:
            self.log(epoch)
        if position == self.steps_per_epoch - 1:
            self.end_epoch(epoch)
        paused_at = time.perf_counter()
        if cfg.sample_every and step % cfg.sample_every == 0 and step < self.total_steps:
            self.preview()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
            self.checkpoint()
        self._log_clock += time.perf_counter() - paused_at  # throughput counts training time only
        self.progress()

    def apply(self, changes: dict) -> None:
        """Settings changed while the job runs: the learning rate and the preview cadence."""
        if not changes:
            return
        if "lr" in changes:
            # the schedule multiplies base_lrs by its factor: move the base, keep the shape
            factor = self.lr_scheduler.get_last_lr()[0] / max(self.lr_scheduler.base_lrs[0], 1e-30)
            self.lr_scheduler.base_lrs = [float(changes["lr"])] * len(self.lr_scheduler.base_lrs)
            for group in self.optimizer.param_groups:
                group["lr"] = float(changes["lr"]) * factor
        known = {k: v for k, v in changes.items() if k in ("sample_every", "log_every", "lr")}
        self.cfg = self.cfg.model_copy(update=known)
        text = ", ".join(f"{k} = {v}" for k, v in known.items())
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"step {self.state.step}: {text}"))

    # ------------------------------------------------------------ reporting

    def log(self, epoch: int) -> None:
        loss = self.meter.take_log_mean(self.across_processes)
        if not math.isfinite(loss):
            raise JobFailed(f"loss became {loss} at step {self.state.step}; the model diverged. "
                            f"Try a lower train.lr (now {self.cfg.lr}), train.max_grad_norm = 1.0, "
                            f"or resume from an earlier checkpoint")
        now = time.perf_counter()
        rate = self._images_since_log * self.accelerator.num_processes / max(now - self._log_clock, 1e-9)
        self._images_since_log, self._log_clock = 0, now
        lr = self.optimizer.param_groups[0]["lr"]
        row = events.StepLogged(self.ctx.job_id, self.state.step, epoch, loss, lr, rate, self.elapsed(),
                                _peak_memory(self.device))
        if self.main:
            self.run.append_metrics({"step": row.step, "epoch": row.epoch, "loss": row.loss, "lr": row.lr,
                                     "img_per_s": round(rate, 2), "elapsed": round(row.elapsed, 3)})
        self.last_loss = loss
        self.ctx.emit(row)
        edges = tuple(i / NoiseLevelMeter.BUCKETS for i in range(NoiseLevelMeter.BUCKETS + 1))
        self.ctx.emit(events.LossByNoiseLevel(self.ctx.job_id, self.state.step, edges, self.levels.take()))

    def across_processes(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over all processes (each saw its own shard of the batch)."""
        return self.accelerator.reduce(value, "mean") if self.accelerator.num_processes > 1 else value

    def end_epoch(self, epoch: int) -> None:
        loss = self.meter.take_epoch_mean(self.across_processes)
        self.state.epoch_losses.append(loss)
        self.ctx.emit(events.EpochFinished(self.ctx.job_id, epoch, loss))

    def progress(self) -> None:
        now = time.perf_counter()
        # While paused each step is a person's single-step request, so each one is reported.
        single_step = self.ctx.control.paused
        if single_step or now - self._last_progress >= events.PROGRESS_INTERVAL_S or self.state.step == self.total_steps:
            self._last_progress = now
            self.ctx.emit(events.Progress(self.ctx.job_id, self.state.step, self.total_steps, self.last_loss))

    def elapsed(self) -> float:
        return self.state.elapsed + time.perf_counter() - self._clock

    # ------------------------------------------------------------ samples

    def sampling_setup(self):
        from difflab.diffusion.generate import SamplingSetup

        return SamplingSetup(self.unwrapped, self.recipe, tuple(self.data.images.shape[1:]),
                             self.data.value_range, self.device, self.noise_scheduler,
                             data_dir=self.job.recipe_dir)

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

    def preview(self) -> None:
        from difflab.diffusion.generate import generate
        from difflab.diffusion.render import image_grid, save_png

        if not self.main:
            return
        # Fixed noise (the sample seed) every time, so previews show the model changing, not the noise.
        with self.sampling_weights():
            images = generate(self.sampling_setup(), self.cfg.preview_images, self.recipe.sample.steps)
        grid = image_grid(images, self.data.value_range, scale=2)
        path = save_png(grid, self.run.samples / f"step_{self.state.step:06d}.png")
        self.ctx.emit(events.PreviewReady(self.ctx.job_id, self.state.step, grid, path))

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        if not self.main:
            return
        state, meter = self.state, self.meter
        tensors = {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                   "log_sum": meter.log_sum, "epoch_sum": meter.epoch_sum}
        counters = {"elapsed": self.elapsed(), "epoch_losses": state.epoch_losses, "log_count": meter.log_count,
                    "epoch_count": meter.epoch_count, "last_loss": self.last_loss}
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
        self.ctx.emit(events.CheckpointSaved(self.ctx.job_id, state.step, path))

    def restore(self, checkpoint: Checkpoint) -> None:
        from difflab.errors import InputError

        try:
            self.unwrapped.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer["optimizer"])
            self.lr_scheduler.load_state_dict(checkpoint.optimizer["lr_scheduler"])
            if "grad_scaler" in checkpoint.optimizer and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(checkpoint.optimizer["grad_scaler"])
            self._restore_ema(checkpoint)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{self.run.checkpoints}: checkpoint step {checkpoint.step} does not match "
                             f"this recipe's model ({str(error).splitlines()[0]})") from None
        tensors, counters = checkpoint.tensors, checkpoint.counters
        self.generator.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])  # dropout draws from the global generator
        self.meter = LossMeter(tensors["log_sum"].to(self.device), counters["log_count"],
                               tensors["epoch_sum"].to(self.device), counters["epoch_count"])
        self.state = TrainingState(checkpoint.step, counters["elapsed"], list(counters["epoch_losses"]))
        self.last_loss = counters.get("last_loss")
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

    # ------------------------------------------------------------ the end

    def finish(self) -> dict:
        """Final checkpoint, the exported model, final samples, figure, GIF and summary."""
        if not self.main:
            return self.summary("finished")
        if not any(p.name == f"step_{self.state.step:06d}" for p in self.run.list_checkpoints()):
            self.checkpoint()
        s = self.recipe.sample
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"sampling {s.num_images} images in {s.steps} steps "
                                                      f"({s.sampler})"))
        with self.sampling_weights():
            self.export()
            final, images = self.write_samples()
            self.ctx.emit(events.PreviewReady(self.ctx.job_id, self.state.step, final,
                                              self.run.samples / "final.png"))
            quality = self.evaluate()
            quality.update(self.guidance_effect(images))
            quality.update(self.invert())
        summary = {**self.summary("finished"), **quality}
        summary["expectations"] = as_records(check_expectations(self.recipe.expect, summary))
        self.run.write_summary(summary)
        return summary

    def evaluate(self) -> dict:
        """The samples' quality against the dataset's reference classifier (recipe [eval])."""
        from difflab.jobs.evaluation import job_logger, measure_model

        if not self.recipe.eval.enabled:
            return {"eval_skipped": "eval.enabled = false"}
        return measure_model(self.sampling_setup(), self.data, self.recipe.eval.num_samples, job_logger(self.ctx))

    def guidance_effect(self, final_images) -> dict:
        """[guidance]: its loss on the final samples, and on the same noise without it (summary `guidance`)."""
        from difflab.diffusion.guidance import guidance_effect

        g, s = self.recipe.guidance, self.recipe.sample
        effect = guidance_effect(self.sampling_setup(), final_images, s.steps)
        if effect is None:
            return {}
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"guidance ({g.function}) loss on {s.num_images} samples: "
                                                      f"{effect['loss_unguided']:.4g} at scale 0, "
                                                      f"{effect['loss_guided']:.4g} at scale {g.scale:g}"))
        return {"guidance": effect}

    def invert(self) -> dict:
        """The recipe's [invert]: DDIM inversion of its images with the model just trained (RUN/inversion)."""
        if not self.recipe.invert.enabled:
            return {}
        from difflab.jobs.inversion import inversion_inputs, log_errors, run_inversion

        cfg, setup = self.recipe.invert, self.sampling_setup()
        guidance = setup.guidance() if cfg.edit_loss_guidance else None
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"DDIM inversion of {len(cfg.images) + len(cfg.image_paths)} "
                                                      f"images, {cfg.steps} steps"))
        table = run_inversion(setup, cfg, inversion_inputs(cfg, self.data, setup, self.job.recipe_dir),
                              self.run.path / "inversion", guidance=guidance)
        log_errors(self.ctx, table)
        return {"invert": table}

    def export(self) -> None:
        """RUN/model (save_pretrained) always; RUN/pipeline, loadable by DDPMPipeline, for DDPM runs.

        A LoRA run also writes RUN/lora (the adapter alone); its model and pipeline have the
        adapter merged in, so plain diffusers loads them too.
        """
        from difflab.files import atomic_dir

        model = self.unwrapped
        if self.cfg.lora_rank:
            from difflab.diffusion.finetune import merged_state_dict, save_lora
            from difflab.diffusion.models import build_model

            save_lora(model, self.cfg, self.run.lora_dir)
            model = build_model(self.recipe).to(self.device)
            model.load_state_dict(merged_state_dict(self.unwrapped))
        with atomic_dir(self.run.model_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
        if self.noise_scheduler is not None:
            from diffusers import DDPMPipeline

            with atomic_dir(self.run.pipeline_dir) as tmp:
                DDPMPipeline(unet=model, scheduler=self.noise_scheduler).save_pretrained(
                    tmp, safe_serialization=True)

    def write_samples(self):
        from difflab.diffusion.generate import write_samples

        return write_samples(self.sampling_setup(), self.run.samples)

    def summary(self, status: str) -> dict:
        from difflab.runtime.versions import versions

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
            "final_loss": self.last_loss,
            "loss_drop_factor": loss_drop_factor([row["loss"] for row in self.run.read_metrics()]),
            "elapsed_s": round(self.elapsed(), 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "samples": str(self.run.samples / "final.png") if status == "finished" else None,
        }


def _peak_memory(device: str) -> int:
    """Peak memory so far: the CUDA allocator's on a GPU, the process's resident set on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = recipe.train
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    return kind(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def _ema(recipe: Recipe, model):
    if not recipe.train.ema:
        return None
    from diffusers.training_utils import EMAModel

    # warm-up (decay grows from 0 toward ema_decay) as in diffusers' unconditional example
    return EMAModel(model.parameters(), decay=recipe.train.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                    power=3 / 4, model_cls=type(model), model_config=model.config)
