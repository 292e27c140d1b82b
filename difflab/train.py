"""The training job: the from-scratch chapter's loop, emitting events as it goes.

Per step: take a batch from the resident dataset, corrupt it by a random amount,
predict the clean image, MSE, Adam. The loss is accumulated on the device and read
back only at log intervals, so a CUDA run never waits on the host each step.
Between steps the job consults its JobControl (pause, stop, single step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab import events
from difflab.errors import JobFailed
from difflab.recipe import Recipe
from difflab.runs import Checkpoint, RunDir
from difflab.worker import JobContext

PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress events a second, whatever the step rate


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

    def take_log_mean(self) -> float:
        mean = (self.log_sum / max(self.log_count, 1)).item()  # the one host sync per log interval
        self.log_sum.zero_()
        self.log_count = 0
        return mean

    def take_epoch_mean(self) -> float:
        mean = (self.epoch_sum / max(self.epoch_count, 1)).item()
        self.epoch_sum.zero_()
        self.epoch_count = 0
        return mean


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
        from difflab.data import load_dataset

        emit = ctx.emit
        emit(events.LogLine(ctx.job_id, f"loading dataset '{self.recipe.dataset.source}'"))
        data = load_dataset(self.recipe.dataset, self.recipe_dir, self.recipe.seed)
        data = _resident(data, ctx.device)
        session = _Session.start(self, ctx, data)
        emit(events.JobStarted(ctx.job_id, self.name, ctx.device, session.total_steps,
                               session.state.step, self.run_dir.path))
        stopped = session.loop()
        if stopped:
            session.checkpoint()
            summary = session.summary("stopped")
            self.run_dir.write_summary(summary)
            return "stopped", summary
        return "finished", session.finish()


def _resident(data, device: str):
    """Keep the decoded dataset on the device when it comfortably fits, else on the CPU."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if data.images.numel() * 4 < free // 4:
            return data.to(device)
        return data
    return data.to(device) if device != "cpu" else data


class _Session:
    """One training session of a job: model, optimizer, RNG and counters, stepped in a loop."""

    def __init__(self, job: TrainingJob, ctx: JobContext, data) -> None:
        recipe = job.recipe
        self.job, self.ctx, self.data, self.recipe = job, ctx, data, recipe
        self.run = job.run_dir
        self.cfg = recipe.train
        self.steps_per_epoch = math.ceil(len(data) / self.cfg.batch_size)
        total = self.cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, self.cfg.max_steps) if self.cfg.max_steps else total
        self.state = TrainingState()
        self.meter = LossMeter.zeros(ctx.device)
        self.last_loss: float | None = None
        self._order_epoch = -1

    @classmethod
    def start(cls, job: TrainingJob, ctx: JobContext, data) -> _Session:
        from difflab.models import build_model

        session = cls(job, ctx, data)
        torch.manual_seed(job.recipe.seed)  # weight initialisation
        session.model = build_model(job.recipe).to(ctx.device)
        session.optimizer = _optimizer(job.recipe, session.model)
        # One generator for every random draw of the loop (noise, amounts, flips): its
        # state goes into checkpoints, which is what makes resume exact.
        session.generator = torch.Generator(device=ctx.device).manual_seed(job.recipe.seed + 1)
        if job.resume:
            session.restore(job.run_dir.load_latest_checkpoint())
        return session

    # ------------------------------------------------------------ the loop

    def loop(self) -> bool:
        """Train until done; True when stopped early by the control."""
        control, cfg = self.ctx.control, self.cfg
        self._clock = time.perf_counter()
        self._last_progress = self._clock
        self._images_since_log = 0
        self._log_clock = self._clock
        self.model.train()
        while self.state.step < self.total_steps:
            if not control.wait_turn():
                return True
            epoch, position = divmod(self.state.step, self.steps_per_epoch)
            self.train_step(self.batch_indices(epoch, position))
            self.state.step += 1
            self.after_step(epoch, position)
        return False

    def batch_indices(self, epoch: int, position: int) -> torch.Tensor:
        # Each epoch's order comes from (seed, epoch) alone, so a resumed run sees the same batches.
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.data), generator=generator)
            self._order_epoch = epoch
        size = self.cfg.batch_size
        return self._order[position * size:(position + 1) * size]

    def train_step(self, indices: torch.Tensor) -> None:
        from difflab.schedules import corrupt

        x = self.data.images[indices.to(self.data.images.device)].to(self.ctx.device, non_blocking=True)
        gen, device = self.generator, self.ctx.device
        if self.recipe.dataset.flip:
            flip = torch.rand(len(x), generator=gen, device=device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        low, high = self.data.value_range
        noise = torch.rand(x.shape, generator=gen, device=device) * (high - low) + low
        amount = torch.rand(len(x), generator=gen, device=device)
        prediction = self.model(corrupt(x, amount, noise))
        loss = F.mse_loss(prediction, x)  # the x0 objective: predict the clean image
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.meter.add(loss)
        self._images_since_log += len(x)

    def after_step(self, epoch: int, position: int) -> None:
        step, cfg = self.state.step, self.cfg
        if step % cfg.log_every == 0 or step == self.total_steps:
            self.log(epoch)
        if position == self.steps_per_epoch - 1:
            self.end_epoch(epoch)
        if cfg.sample_every and step % cfg.sample_every == 0 and step < self.total_steps:
            self.preview()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
            self.checkpoint()
        self.progress()

    # ------------------------------------------------------------ reporting

    def log(self, epoch: int) -> None:
        loss = self.meter.take_log_mean()
        if not math.isfinite(loss):
            raise JobFailed(f"loss became {loss} at step {self.state.step}; the model diverged. "
                            f"Try a lower train.lr (now {self.cfg.lr}) or resume from an earlier checkpoint")
        now = time.perf_counter()
        rate = self._images_since_log / max(now - self._log_clock, 1e-9)
        self._images_since_log, self._log_clock = 0, now
        lr = self.optimizer.param_groups[0]["lr"]
        row = events.StepLogged(self.ctx.job_id, self.state.step, epoch, loss, lr, rate, self.elapsed())
        self.run.append_metrics({"step": row.step, "epoch": row.epoch, "loss": row.loss, "lr": row.lr,
                                 "img_per_s": round(rate, 2), "elapsed": round(row.elapsed, 3)})
        self.last_loss = loss
        self.ctx.emit(row)

    def end_epoch(self, epoch: int) -> None:
        loss = self.meter.take_epoch_mean()
        self.state.epoch_losses.append(loss)
        self.ctx.emit(events.EpochFinished(self.ctx.job_id, epoch, loss))

    def progress(self) -> None:
        now = time.perf_counter()
        # While paused each step is a person's single-step request, so each one is reported.
        single_step = self.ctx.control.paused
        if single_step or now - self._last_progress >= PROGRESS_INTERVAL_S or self.state.step == self.total_steps:
            self._last_progress = now
            self.ctx.emit(events.Progress(self.ctx.job_id, self.state.step, self.total_steps, self.last_loss))

    def elapsed(self) -> float:
        return self.state.elapsed + time.perf_counter() - self._clock

    # ------------------------------------------------------------ samples

    def sample_grid(self, count: int, steps: int):
        from difflab.render import image_grid
        from difflab.sample import starting_noise, toy_sample

        noise = starting_noise(count, tuple(self.data.images.shape[1:]), self.recipe.sample.seed,
                               self.data.value_range, self.ctx.device)
        self.model.eval()
        images = toy_sample(self.model, noise, steps)
        self.model.train()
        return image_grid(images, self.data.value_range, scale=2)

    def preview(self) -> None:
        # Fixed noise (the sample seed) every time, so previews show the model changing, not the noise.
        grid = self.sample_grid(self.cfg.preview_images, self.recipe.sample.steps)
        path = self.run.save_image(grid, f"step_{self.state.step:06d}.png")
        self.ctx.emit(events.PreviewReady(self.ctx.job_id, self.state.step, grid, path))

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        state = self.state
        checkpoint = Checkpoint(
            step=state.step, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            tensors={"generator": self.generator.get_state(), "log_sum": self.meter.log_sum,
                     "epoch_sum": self.meter.epoch_sum},
            counters={"elapsed": self.elapsed(), "epoch_losses": state.epoch_losses,
                      "log_count": self.meter.log_count, "epoch_count": self.meter.epoch_count,
                      "last_loss": self.last_loss})
        path = self.run.save_checkpoint(checkpoint, self.cfg.keep_checkpoints)
        self.ctx.emit(events.CheckpointSaved(self.ctx.job_id, state.step, path))

    def restore(self, checkpoint: Checkpoint) -> None:
        from difflab.errors import InputError

        try:
            self.model.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
        except (RuntimeError, ValueError, KeyError) as error:
            raise InputError(f"{self.run.checkpoints}: checkpoint step {checkpoint.step} does not match "
                             f"this recipe's model ({str(error).splitlines()[0]})") from None
        device = self.ctx.device
        self.generator.set_state(checkpoint.tensors["generator"])
        counters = checkpoint.counters
        self.meter = LossMeter(checkpoint.tensors["log_sum"].to(device), counters["log_count"],
                               checkpoint.tensors["epoch_sum"].to(device), counters["epoch_count"])
        self.state = TrainingState(checkpoint.step, counters["elapsed"], list(counters["epoch_losses"]))
        self.last_loss = counters.get("last_loss")
        self.run.truncate_metrics(checkpoint.step)
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"resumed from step {checkpoint.step}"))

    # ------------------------------------------------------------ the end

    def finish(self) -> dict:
        """Final checkpoint, the model folder, final samples, trajectory figure and summary."""
        if not any(p.name == f"step_{self.state.step:06d}" for p in self.run.list_checkpoints()):
            self.checkpoint()
        _export_model(self.model, self.run.model_dir)
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"sampling {self.recipe.sample.num_images} images "
                                                      f"in {self.recipe.sample.steps} steps"))
        final = self.sample_grid(self.recipe.sample.num_images, self.recipe.sample.steps)
        final_path = self.run.save_image(final, "final.png")
        self.ctx.emit(events.PreviewReady(self.ctx.job_id, self.state.step, final, final_path))
        self.run.save_image(self.trajectory(), "trajectory.png")
        summary = self.summary("finished")
        self.run.write_summary(summary)
        return summary

    def trajectory(self):
        from difflab.render import trajectory_figure
        from difflab.sample import sample_with_trajectory, starting_noise

        s = self.recipe.sample
        noise = starting_noise(s.trajectory_images, tuple(self.data.images.shape[1:]), s.seed,
                               self.data.value_range, self.ctx.device)
        self.model.eval()
        path = sample_with_trajectory(self.model, noise, s.trajectory_steps)
        return trajectory_figure(path.inputs, path.predictions, self.data.value_range)

    def summary(self, status: str) -> dict:
        from difflab.models import count_parameters
        from difflab.versions import versions

        return {
            "status": status, "job": "train", "run_dir": str(self.run.path), "device": self.ctx.device,
            "dataset": self.data.name, "dataset_size": len(self.data),
            "parameters": count_parameters(self.model),
            "steps": self.state.step, "total_steps": self.total_steps,
            "epochs_completed": len(self.state.epoch_losses), "epoch_losses": self.state.epoch_losses,
            "final_loss": self.last_loss, "elapsed_s": round(self.elapsed(), 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "samples": str(self.run.samples / "final.png") if status == "finished" else None,
        }


def _optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.train.optimizer]
    return kind(model.parameters(), lr=recipe.train.lr)


def _export_model(model, folder: Path) -> None:
    from difflab.files import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
