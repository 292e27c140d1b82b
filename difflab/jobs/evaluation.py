"""Evaluating a trained model: sample it, measure the samples (evaluate.py), record the numbers.

Used at the end of `difflab run` (after_training.finish_training calls `measure_model`) and by
`difflab eval RUN_DIR` (EvalJob), which can also sweep a sampler's step count and
adds standard Inception FID when torch-fidelity and its weights are already here.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from difflab.diffusion.data import ImageDataset, load_dataset
from difflab.diffusion.generate import generate
from difflab.diffusion.loading import run_recipe, run_setup
from difflab.diffusion.quality import evaluate_images
from difflab.diffusion.reference import Reference, missing_reason, reference_classifier
from difflab.diffusion.render import to_unit
from difflab.errors import InputError
from difflab.jobs.expectations import as_records, check_expectations
from difflab.jobs.sampling import SamplingProgress, say_weights
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext

# torch-fidelity's file name for the FID Inception weights (in torch hub's checkpoints/ folder).
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def generated_images(setup, count: int, steps: int, callback=None) -> torch.Tensor:
    """`count` samples of the setup's model in 0..1 on the CPU."""
    return to_unit(generate(setup, count, steps, callback).cpu(), setup.value_range)


def requested_classes(setup, count: int) -> torch.Tensor | None:
    """The class each of `count` generated images was asked for (as generate() asks), or None
    for an unconditional model: the class accuracy compares them with the predicted classes."""
    labels = setup.labels(count)
    return None if labels is None else labels.cpu()


def measure_model(setup, data: ImageDataset, count: int, log: Callable[[str], None],
                  progress=None) -> dict:
    """The quality numbers for a sampling setup (its recipe's sampler and steps), or why there are none."""
    reason = missing_reason(data)
    if reason:
        return {"eval_skipped": f"no reference classifier: {reason}"}
    reference = reference_classifier(data, setup.device, log)
    s = setup.recipe.sample
    log(f"evaluating {count} samples ({s.sampler}, {s.steps} steps) against the reference classifier")
    started = time.perf_counter()
    report = evaluate_images(reference, generated_images(setup, count, s.steps, progress),
                             requested=requested_classes(setup, count))
    for warning in report.warnings:
        log(f"warning: {warning}")
    numbers = {"sampler": s.sampler, "steps": s.steps, **report.as_dict(),
               "classifier": str(reference.path), "elapsed_s": round(time.perf_counter() - started, 2)}
    return {"eval": numbers}


def inception_unavailable() -> str | None:
    """Why standard Inception FID cannot be computed here, or None when it can (nothing is downloaded)."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return "skipped: torch-fidelity not installed (pip install 'difflab[fid]')"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not weights.is_file():
        return f"skipped: Inception weights not cached at {weights} (offline; torch-fidelity fetches them once online)"
    return None


def inception_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Standard FID (torchmetrics on torch-fidelity's Inception v3) between images in 0..1."""
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    for images, real_side in ((real, True), (fake, False)):
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        for i in range(0, len(rgb), 64):
            metric.update(rgb[i:i + 64], real=real_side)
    return float(metric.compute())


class EvalJob:
    """`difflab eval RUN_DIR`: the quality of a finished run, for one sampler setting or a sweep of steps."""

    name = "eval"

    def __init__(self, run_dir: Path, overrides: list[str] = (), samples: int | None = None,
                 sweep_steps: list[int] = (), inception: bool | None = None, device: str = "auto") -> None:
        self.run_dir, self.overrides, self.samples = Path(run_dir), list(overrides), samples
        self.sweep_steps, self.inception, self.device = list(sweep_steps), inception, device

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        if self.sweep_steps:  # the largest step count must suit the schedule, as sample.steps must
            run_recipe(self.run_dir, [*self.overrides, f"sample.steps={max(self.sweep_steps)}"])
        setup = run_setup(self.run_dir, self.overrides, ctx.device)
        say_weights(ctx, setup)
        recipe, log = setup.recipe, job_logger(ctx)
        count = self.samples or recipe.eval.num_samples
        data = load_dataset(recipe.dataset, self.run_dir, recipe.seed)
        reason = missing_reason(data)
        if reason:
            raise InputError(f"{self.run_dir}: cannot evaluate: no reference classifier ({reason})")
        reference = reference_classifier(data, ctx.device, log)
        settings = self.sweep_steps or [recipe.sample.steps]
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, sum(settings), 0, self.run_dir))
        rows, done, images = [], 0, None
        for steps in settings:
            progress = SamplingProgress(ctx, steps, sum(settings), done)
            row, images = self._measure(reference, setup, count, steps, progress, log)
            rows.append(row)
            done += steps
        run = RunDir(self.run_dir)
        changes = {"eval_sweep": {rows[0]["sampler"]: rows}} if self.sweep_steps else {"eval": rows[-1]}
        if self.inception is not False:
            changes["inception_fid"] = self._inception(reference, images, log)
        if not self.sweep_steps and not self.overrides:  # the recipe's own sampling: its expectations apply
            summary = {**run.read_summary(), **changes}
            changes["expectations"] = as_records(check_expectations(recipe.expect, summary))
        # summary.json keeps one sweep table per sampler: sweeping another sampler keeps this one's
        sweeps = {**run.read_summary().get("eval_sweep", {}), **changes.get("eval_sweep", {})}
        run.update_summary({**changes, **({"eval_sweep": sweeps} if self.sweep_steps else {})})
        return "finished", {"status": "finished", "job": "eval", "run_dir": str(self.run_dir), **changes}

    def _measure(self, reference: Reference, setup, count: int, steps: int, progress, log):
        s = setup.recipe.sample
        log(f"sampling {count} images: {s.sampler}, {steps} steps")
        started = time.perf_counter()
        images = generated_images(setup, count, steps, progress)
        sampled_s = time.perf_counter() - started
        report = evaluate_images(reference, images, requested=requested_classes(setup, count))
        for warning in report.warnings:
            log(f"warning: {warning}")
        row = {"sampler": s.sampler, "steps": steps, **report.as_dict(), "classifier": str(reference.path),
               "sampling_s": round(sampled_s, 2)}
        return row, images

    def _inception(self, reference: Reference, images: torch.Tensor, log) -> dict:
        reason = inception_unavailable()
        if reason:
            log(f"Inception FID {reason}")
            return {"value": None, "note": reason}
        value = inception_fid(reference.split.train, images)
        note = f"{len(images)} samples vs {len(reference.split.train)} real images"
        log(f"Inception FID {value:.2f} ({note})")
        return {"value": value, "note": note}


def job_logger(ctx: JobContext) -> Callable[[str], None]:
    """A `log(text)` that emits LogLines; text starting "warning: " becomes a warning."""
    def log(text: str) -> None:
        level = "warning" if text.startswith("warning: ") else "info"
        ctx.emit(events.LogLine(ctx.job_id, text.removeprefix("warning: "), level))
    return log
