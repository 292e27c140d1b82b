"""The model screen's probe: the recipe's model dry-run (parameters, block shapes, FLOPs), a rough
time and memory of one training step at the recipe's batch (a small step timed here, memory.py's
estimate), and, when it is cheap, one real step at the batch to measure how far off that is."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from difflab.diffusion.models import build_model, denoise, dry_run
from difflab.diffusion.sources import provenance, resolve
from difflab.jobs.memory import check_training_memory, estimate_training_memory, free_memory
from difflab.recipe import Recipe
from difflab.runtime.worker import JobContext


@dataclass
class MeasuredStep:
    """One real optimizer step at `batch` (the recipe's, or fewer when that would take long here),
    beside what the estimate says for the same batch."""

    batch: int
    seconds: float
    memory_bytes: int | None
    estimated_seconds: float
    estimated_bytes: int


@dataclass
class ModelEstimate:
    """A model report, rough costs of one training step at the recipe's batch, and a real step's
    measurement to show how far off the estimate is (None when even one image would not fit)."""

    report: Any
    device: str
    step_seconds: float
    memory_bytes: int
    measured: MeasuredStep | None = None


@dataclass
class ModelProbe:
    """Dry-run the recipe's model; time a small training step and scale it to the batch; then take a
    real step, at as much of the batch as fits in about a second, to measure the estimate's error."""

    recipe: Recipe
    recipe_dir: Path | None = None  # where a relative train.init_from is found
    timing_batch: int = 16
    name: str = "model"
    device: str = "auto"
    measure_budget_s: float = 1.0  # the probe reruns on every change: keep the real step short

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        resolution = resolve(self.recipe, self.recipe_dir)  # a pretrained source's network and schedule
        self.recipe = resolution.recipe
        memory = check_training_memory(self.recipe, ctx.device, self.recipe_dir).total  # before anything is built
        report = dry_run(self.recipe, "cpu", self.recipe_dir)
        channels, size = report.input_shape[0], report.input_shape[-1]  # a latent UNet's input is the latent
        model = build_model(self.recipe, self.recipe_dir).to(ctx.device)
        batch = self.recipe.train.batch_size
        timing_batch = min(self.timing_batch, batch)
        per_image = _fastest_step(model, timing_batch, channels, size, ctx.device) / timing_batch
        estimate = ModelEstimate(report, ctx.device, per_image * batch, memory)
        measure_batch = min(batch, max(1, int(self.measure_budget_s / per_image)))
        expected = estimate_training_memory(_with_batch(self.recipe, measure_batch), report).total
        free = free_memory(ctx.device)
        if free is None or 2 * expected < free:
            seconds, used = _real_step(model, measure_batch, channels, size, ctx.device)
            estimate.measured = MeasuredStep(measure_batch, seconds, used, per_image * measure_batch, expected)
        source = resolution.source.where if resolution.source else None
        return "finished", {"estimate": estimate, "origins": provenance(resolution), "source": source}


def _with_batch(recipe: Recipe, batch: int) -> Recipe:
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"batch_size": batch})})


def _fastest_step(model, batch: int, channels: int, size: int, device: str, repeats: int = 3) -> float:
    """Seconds for one forward+backward pass: the median of a few after a warm-up pass (one outlier
    on a busy machine moves a median less than a mean, and the warm-up picks kernels)."""
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        _forward(model, x, t).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _real_step(model, batch: int, channels: int, size: int, device: str) -> tuple[float, int | None]:
    """One optimizer step at `batch` (the timing passes warmed the kernels): its seconds, and its peak
    memory above what was in use before (CUDA's allocator peak, or the resident-set high-water mark)."""
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    model.zero_grad(set_to_none=True)  # the timing passes left gradients: a real step starts without
    before = _reset_peak(device)
    started = time.perf_counter()
    _forward(model, x, t).square().mean().backward()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = _peak(device)
    return seconds, None if peak is None or before is None else max(peak - before, 0)


def _forward(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a training step runs the network for: a denoiser's prediction, a VAE's reconstruction."""
    return model(x).sample if isinstance(model, AutoencoderKL) else denoise(model, x, t)


def _reset_peak(device: str) -> int | None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:  # Linux: writing 5 to clear_refs resets the VmHWM high-water mark to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def _peak(device: str) -> int | None:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        return _status_kib("VmHWM")
    except OSError:
        return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")
