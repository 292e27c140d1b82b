"""The training job: one loop for the toy and the DDPM chapters, emitting events as it goes.

`_Training.loop` reads top to bottom; session.py holds its state, steering.py is a person's
hand on it, meters.py what it counts, after_training.py what follows its last step.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from PIL import Image

from difflab.diffusion.conditioning import drop_labels
from difflab.diffusion.data import ImageDataset, load_dataset
from difflab.diffusion.generate import generate
from difflab.diffusion.latents import LatentCodec, encode_dataset, latent_shape
from difflab.diffusion.models import count_parameters
from difflab.diffusion.render import image_grid, save_png
from difflab.diffusion.sources import resolve_run
from difflab.errors import JobFailed, reason
from difflab.jobs.after_training import finish_training
from difflab.jobs.devices import resolve_device
from difflab.jobs.memory import check_training_memory
from difflab.jobs.meters import PartsMeter
from difflab.jobs.session import TrainingSession
from difflab.jobs.steering import Steering
from difflab.jobs.tracking import check_tracker, log_grid
from difflab.jobs.vae_source import run_codec
from difflab.jobs.vae_training import finish_vae, is_vae, preview_figure, split_for_vae
from difflab.recipe import Recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext


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

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        """Load the data and train; then what follows training, or a checkpoint when stopped."""
        try:
            return self._train(ctx)
        finally:
            self.run_dir.release()  # another process may write the run now (the lab lives on after its job)

    def _train(self, ctx: JobContext) -> tuple[str, dict]:
        emit = ctx.emit
        if not self.resume:  # train.init_from's network and schedule, as recipe.toml then says (sources.py)
            self.recipe = resolve_run(self.recipe, self.run_dir, self.recipe_dir)
        codec = self._vae(ctx)  # first: the memory check sizes the UNet by its latent
        check_training_memory(self.recipe, ctx.device, self.recipe_dir)  # refused before the data or the model is built
        check_tracker(self.recipe.train.log_with)
        emit(events.LogLine(ctx.job_id, f"loading dataset '{self.recipe.dataset.source}'"))
        data = load_dataset(self.recipe.dataset, self.recipe_dir, self.recipe.seed, self.recipe.audio)
        trained_on = data if codec is None else self._encoded(ctx, codec, data)
        pixels = data
        if is_vae(self.recipe):  # measured on images it never trains on: those are what "pixels" holds
            trained_on, pixels = split_for_vae(self.recipe, data)
            emit(events.LogLine(ctx.job_id, f"{len(pixels)} of the {len(data)} images held out of training to "
                                            f"measure the VAE's reconstructions"))
        session = _Training.start(ctx, self.recipe, self.run_dir, self.recipe_dir, self.resume, trained_on,
                                  pixels=pixels, codec=codec)
        model = session.unwrapped
        emit(events.JobStarted(ctx.job_id, self.name, session.device, session.total_steps,
                               session.state.step, self.run_dir.path, count_parameters(model),
                               count_parameters(model, trainable_only=True)))
        try:
            return self._end(session, self._loop(session))
        finally:
            session.accelerator.end_training()  # closes the trackers' files, whatever ended the job

    def _vae(self, ctx: JobContext) -> LatentCodec | None:
        """A latent recipe's VAE (fetched, or a built-in one trained, when it must be), else None."""
        if not self.recipe.latent.vae:
            return None
        return run_codec(ctx, self.recipe, self.run_dir, self.recipe_dir, resolve_device(ctx.device), _train_vae)

    def _encoded(self, ctx: JobContext, codec: LatentCodec, data: ImageDataset) -> ImageDataset:
        """The dataset encoded through the VAE, once, before the first step (no VAE pass per epoch)."""
        latent_shape(codec.vae.config, self.recipe, self.recipe.latent.vae)  # refuses sizes the VAE can't take
        encoded = encode_dataset(codec, data.to(codec.vae.device), self.recipe.latent.encode_batch_size)
        shape = " x ".join(map(str, encoded.data.images.shape[1:]))
        ctx.emit(events.LogLine(ctx.job_id, f"encoded {len(data)} images to {shape} latents through the VAE "
                                f"({codec.source}) in {encoded.seconds:.1f} s, once; scaling factor "
                                f"{codec.scaling_factor:.4g}, latent std per channel "
                                f"{', '.join(f'{s:.2f}' for s in encoded.std)}"))
        return encoded.data.to("cpu") if data.images.device.type == "cpu" else encoded.data

    def _loop(self, session: _Training) -> bool:
        """The training loop; True when stopped early. Running out of memory fails the job with advice."""
        try:
            return session.loop()
        except torch.OutOfMemoryError as error:
            cfg = self.recipe.train
            raise JobFailed(
                f"out of memory on {session.device} at step {session.state.step} "
                f"({reason(error)}). Try a smaller train.batch_size (now {cfg.batch_size}) with "
                f"train.gradient_accumulation = {cfg.gradient_accumulation * 2} to keep the effective batch, "
                f"or train.mixed_precision = 'bf16'") from None

    def _end(self, session: _Training, stopped: bool) -> tuple[str, dict]:
        """A stopped run's checkpoint and summary, or what follows a finished run's last step."""
        if stopped:
            session.checkpoint()
            summary = session.summary("stopped")
            self.run_dir.write_summary(summary)
            return "stopped", summary
        return "finished", session.finish()


def _train_vae(ctx: JobContext, recipe: Recipe, run: RunDir) -> tuple[str, dict]:
    """Train a built-in VAE recipe (vae_source's cache) with this same job."""
    return TrainingJob(recipe, run).run(ctx)


class _Training(TrainingSession):
    """The training loop over a session's state (session.py)."""

    def loop(self) -> bool:
        """Train until done; True when stopped early by the control."""
        self.steering = Steering(self.ctx)
        self._order_epoch = -1
        self._clock = self._last_progress = self._log_clock = time.perf_counter()
        self._images_since_log = 0
        self.parts = PartsMeter()  # a loss's terms (a VAE's), read with the loss at log lines
        self.model.train()
        while self.state.step < self.total_steps:
            waiting = time.perf_counter()
            if not self.steering.wait_turn():
                return True
            paused = time.perf_counter() - waiting  # elapsed and throughput count training time only
            self._clock += paused
            self._log_clock += paused
            self.cfg = self.steering.adjust(self.cfg, self.state.step, self.optimizer, self.lr_scheduler)
            epoch, position = divmod(self.state.step, self.steps_per_epoch)
            self.train_step(self.micro_batches(epoch, position))
            self.state.step += 1
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
        """One optimizer step: loss and backward per micro-batch, clip, step, schedule, EMA."""
        acc, gen = self.accelerator, self.generator
        total = torch.zeros((), device=self.device)
        for i, indices in enumerate(micro_batches):
            indices = indices.to(self.data.images.device)
            x = self.data.images[indices].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
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
            if batch.parts:
                self.parts.add(batch.parts)
            self.levels.add(batch.per_image, batch.level)
            self._images_since_log += len(x)
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())
        mean = total / len(micro_batches)
        self.meter.add(mean)
        self._step_loss = mean  # a device tensor: read only when a person steps one at a time
        self.watch.see(mean, self.state.step + 1)

    def labels(self, indices: torch.Tensor) -> torch.Tensor | None:
        """A class-conditional model's labels for a micro-batch, some dropped to "no class"."""
        classes = self.recipe.model.num_classes
        if not classes:
            return None
        labels = self.data.labels[indices].to(self.device, non_blocking=True)
        return drop_labels(labels, self.cfg.label_dropout, classes, self.generator)

    def log(self, epoch: int) -> None:
        """The mean loss since the last log line (and of each of its terms), with lr, throughput and
        the loss by noise level (a VAE has no noise level: its terms instead)."""
        self.check_finite()
        loss = self.meter.take_log_mean(self.across_processes)
        parts = self.parts.take(self.across_processes)
        now = time.perf_counter()
        rate = self._images_since_log * self.accelerator.num_processes / max(now - self._log_clock, 1e-9)
        self._images_since_log, self._log_clock = 0, now
        lr = self.optimizer.param_groups[0]["lr"]
        row = events.StepLogged(self.ctx.job_id, self.state.step, epoch, loss, lr, rate, self.elapsed(),
                                _peak_memory(self.device), parts)
        if self.main:
            self.run.append_metrics({"step": row.step, "epoch": row.epoch, "loss": row.loss, "lr": row.lr,
                                     "img_per_s": round(rate, 2), "elapsed": round(row.elapsed, 3), **parts})
            self.accelerator.log({"loss": row.loss, "lr": row.lr, "img_per_s": rate, **parts}, step=row.step)
        self.state.last_loss = loss
        self.ctx.emit(row)
        if not parts:
            self.ctx.emit(events.LossByNoiseLevel(self.ctx.job_id, self.state.step, self.levels.edges,
                                                  self.levels.take()))

    def across_processes(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over all processes (each saw its own shard of the batch)."""
        return self.accelerator.reduce(value, "mean") if self.accelerator.num_processes > 1 else value

    def end_epoch(self, epoch: int) -> None:
        loss = self.meter.take_epoch_mean(self.across_processes)
        self.state.epoch_losses.append(loss)
        self.ctx.emit(events.EpochFinished(self.ctx.job_id, epoch, loss))

    def preview(self) -> None:
        if not self.main:
            return
        with self.sampling_weights():
            if is_vae(self.recipe):  # held-out images above their reconstructions
                grid = preview_figure(self.unwrapped, self.pixels, self.cfg.preview_images)
            else:  # fixed noise (the sample seed) every time: previews show the model changing, not the noise
                images = generate(self.sampling_setup(), self.cfg.preview_images, self.recipe.sample.steps)
                grid = image_grid(images, self.data.value_range, scale=2)
        path = save_png(grid, self.run.samples / f"step_{self.state.step:06d}.png")
        log_grid(self.accelerator, "samples", grid, self.state.step)
        self.ctx.emit(events.PreviewReady(self.ctx.job_id, self.state.step, grid, path))

    def progress(self) -> None:
        now = time.perf_counter()
        # While paused each step is a person's single-step request, so each one is reported.
        single_step = self.steering.single_stepping
        if single_step or now - self._last_progress >= events.PROGRESS_INTERVAL_S or self.state.step == self.total_steps:
            self._last_progress = now
            # A single step shows its own loss (one sync, at a person's pace); otherwise the last logged one.
            loss = float(self._step_loss) if single_step else self.state.last_loss
            self.ctx.emit(events.Progress(self.ctx.job_id, self.state.step, self.total_steps, loss))

    def finish(self) -> dict:
        """Hand the trained model to what follows training (after_training.py, or vae_training.py for
        a VAE); summary.json's contents."""
        if not self.main:
            return self.summary("finished")
        lent = {"step": self.state.step, "ema_weights": self.sampling_weights, "save_checkpoint": self.checkpoint,
                "summary": self.summary}
        if is_vae(self.recipe):
            result = finish_vae(self.ctx, self.recipe, self.run, self.unwrapped, self.data, self.pixels, **lent)
        else:
            result = finish_training(self.ctx, self.recipe, self.run, self.pixels, self.sampling_setup(),
                                     self.recipe_dir, **lent)
        final = self.run.samples / "final.png"
        if self.accelerator.trackers and final.is_file():
            with Image.open(final) as grid:
                log_grid(self.accelerator, "final", grid, self.state.step)
        return result


def _peak_memory(device: str) -> int:
    """Peak memory so far: the CUDA allocator's on a GPU, the process's resident set on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    import resource  # POSIX only: imported where a CPU run needs it, so the module imports everywhere

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
