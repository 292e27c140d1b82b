"""The model screen's probe: the recipe's model dry-run (parameters, block shapes, FLOPs) and a
rough time and memory of one training step at the recipe's batch, from a small step timed here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from difflab.diffusion.models import build_model, denoise, dry_run
from difflab.jobs.memory import check_training_memory, estimate_training_memory
from difflab.recipe import Recipe
from difflab.runtime.worker import JobContext


@dataclass
class ModelEstimate:
    """A model report plus rough costs of one training step at the recipe's batch."""

    report: Any
    device: str
    step_seconds: float
    memory_bytes: int


@dataclass
class ModelProbe:
    """Dry-run the recipe's model; time a small training step and scale it to the batch."""

    recipe: Recipe
    timing_batch: int = 16
    name: str = "model"
    device: str = "auto"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        check_training_memory(self.recipe, ctx.device)  # before anything real is built
        report = dry_run(self.recipe, "cpu")
        size, channels = self.recipe.dataset.image_size, self.recipe.dataset.channels
        model = build_model(self.recipe).to(ctx.device)
        per_image = _fastest_step(model, self.timing_batch, channels, size, ctx.device) / self.timing_batch
        memory = estimate_training_memory(self.recipe, report).total
        return "finished", {"estimate": ModelEstimate(report, ctx.device, per_image * self.recipe.train.batch_size,
                                                      memory)}


def _fastest_step(model, batch: int, channels: int, size: int, device: str, repeats: int = 3) -> float:
    """Seconds for one forward+backward pass: the fastest of a few (a busy machine only adds time)."""
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    times = []
    for _ in range(repeats + 1):  # the first pass picks kernels and is not counted
        started = time.perf_counter()
        denoise(model, x, t).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times[1:])
