"""How much memory one training step needs, estimated from a dry run on the meta device (nothing
is allocated, so a model of a trillion weights costs nothing to ask about), and the check that
refuses a recipe this machine cannot hold before any of it is built. The model screen shows the
same estimate."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.diffusion.models import ModelReport, dry_run
from difflab.errors import InputError
from difflab.recipe import Recipe
from difflab.runtime.runs import human_size

FLOAT_BYTES = 4


@dataclass
class MemoryEstimate:
    """Bytes of one training step at the recipe's batch, by what holds them."""

    parameters: int
    state_bytes: int        # weights, gradients, Adam's two moments, and an EMA copy if asked
    activations_bytes: int  # what the backward pass keeps from the forward, for the whole batch

    @property
    def total(self) -> int:
        return self.state_bytes + self.activations_bytes


def estimate_training_memory(recipe: Recipe, report: ModelReport | None = None,
                             base_dir: Path | None = None) -> MemoryEstimate:
    """The estimate from the recipe's model (its block shapes, from a meta-device dry run)."""
    report = report or dry_run(recipe, "meta", base_dir)
    copies = 4 + (1 if recipe.train.ema else 0)
    # Each block's output is kept about three times over (its input, norm and activation) for backward.
    per_image = sum(FLOAT_BYTES * math.prod(shape) for _, shape in report.blocks) * 3
    return MemoryEstimate(report.parameters, copies * FLOAT_BYTES * report.parameters,
                          per_image * recipe.train.batch_size)


def check_training_memory(recipe: Recipe, device: str, base_dir: Path | None = None) -> MemoryEstimate:
    """The estimate, or an InputError naming what to shrink when it exceeds the device's free memory
    (`base_dir`: where the recipe's relative paths, a latent.vae folder, resolve)."""
    estimate = estimate_training_memory(recipe, base_dir=base_dir)
    free = free_memory(device)
    if free is None or estimate.total <= free:
        return estimate
    train, size = recipe.train, recipe.dataset.image_size
    if estimate.state_bytes > estimate.activations_bytes:
        change = f"a smaller model (now {estimate.parameters:,} parameters): fewer model channels or blocks"
    else:
        change = (f"a smaller train.batch_size (now {train.batch_size}) with train.gradient_accumulation to keep "
                  f"the effective batch, or a smaller dataset.image_size (now {size})")
    raise InputError(
        f"one training step needs about {human_size(estimate.total)} (weights, gradients and optimizer "
        f"{human_size(estimate.state_bytes)}, activations at batch {train.batch_size} and {size} px "
        f"{human_size(estimate.activations_bytes)}) but {device} has {human_size(free)} free; use {change}")


def free_memory(device: str) -> int | None:
    """Bytes the device can still give: CUDA's free memory, or the system's available RAM (None if unknown)."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None

