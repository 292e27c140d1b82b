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

from difflab.diffusion.generate import write_samples
from difflab.diffusion.loading import pipeline_setup, run_setup
from difflab.runtime import events
from difflab.runtime.runs import source_kind
from difflab.runtime.worker import JobContext


@dataclass
class SampleSource:
    """Where the model comes from: a run directory, or a pipeline path / hub id."""

    run_dir: Path | None = None
    pipeline: str | None = None

    @classmethod
    def of_folder(cls, folder: Path) -> SampleSource:
        """A pipeline when the folder holds model_index.json, else a run or one of its checkpoints."""
        return cls(pipeline=str(folder)) if source_kind(folder) == "pipeline" else cls(run_dir=folder)


class SampleJob:
    """Sample `recipe.sample` from a source into an output folder."""

    name = "sample"

    def __init__(self, source: SampleSource, out: Path, overrides: list[str] = (), device: str = "auto") -> None:
        self.source, self.out, self.overrides, self.device = source, Path(out), list(overrides), device

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        setup = self._setup(ctx.device)
        say_weights(ctx, setup)
        s = setup.recipe.sample
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, s.steps, 0, self.out))
        started = time.perf_counter()
        stem = f"{s.sampler}-{s.steps}steps-seed{s.seed}-"
        setup.progress = SamplingProgress(ctx, s.steps)
        grid, _ = write_samples(setup, self.out, stem)
        path = self.out / f"{stem}final.png"
        ctx.emit(events.PreviewReady(ctx.job_id, s.steps, grid, path))
        return "finished", {"status": "finished", "job": "sample", "samples": str(path), "sampler": s.sampler,
                            "steps": s.steps, "seed": s.seed, "weights": setup.weights or None, "elapsed_s": round(time.perf_counter() - started, 3)}

    def _setup(self, device: str):
        if self.source.pipeline:
            return pipeline_setup(self.source.pipeline, self.overrides, device)
        return run_setup(Path(self.source.run_dir), self.overrides, device)


def say_weights(ctx: JobContext, setup) -> None:
    """Log where a run's weights came from when it is not its finished model (a stopped run's checkpoint)."""
    if setup.weights and setup.weights != "the finished model":
        ctx.emit(events.LogLine(ctx.job_id, f"using {setup.weights}"))


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
