"""train.log_with: a run's loss, learning rate, throughput and sample grids, also sent through
Accelerate's experiment trackers (TensorBoard, Weights & Biases) into RUN/logs/.

The loop logs to them where it writes metrics.jsonl, with the numbers it already read
there, so a tracker costs no extra device sync.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from PIL import Image

from difflab.errors import InputError
from difflab.recipe import Recipe

# train.log_with's choices: the package each needs, and how to install it
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "pip install 'difflab[tensorboard]'"),
                    "wandb": ("wandb", "pip install wandb")}
PROJECT = "train"  # TensorBoard writes RUN/logs/train/; wandb names its project so


def check_tracker(log_with: str) -> None:
    """Refuse, before anything is trained, a train.log_with whose package is not installed."""
    if log_with == "none":
        return
    package, install = TRACKER_PACKAGES[log_with]
    if importlib.util.find_spec(package) is None:
        raise InputError(f"train.log_with = '{log_with}': the {package} package is not installed; {install}")


def accelerator_options(recipe: Recipe, logs: Path) -> dict:
    """Accelerator(...) keywords for the recipe's tracker (none when it has none)."""
    log_with = recipe.train.log_with
    return {} if log_with == "none" else {"log_with": log_with, "project_dir": str(logs)}


def start_tracking(accelerator: Accelerator, recipe: Recipe, logs: Path, step: int) -> None:
    """Open the recipe's tracker run, with the recipe as its configuration (hyperparameters).

    A run resumed from its step `step` checkpoint: TensorBoard drops what the earlier session
    logged after that step (purge_step), as metrics.jsonl is cut back to it.
    """
    if recipe.train.log_with == "none":
        return
    if accelerator.is_main_process:
        logs.mkdir(parents=True, exist_ok=True)  # wandb.init(dir=...) wants it to exist
    options = {"tensorboard": {"purge_step": step + 1} if step else {}, "wandb": {"dir": str(logs)}}
    accelerator.init_trackers(PROJECT, config=flat_config(recipe), init_kwargs=options)


def log_grid(accelerator: Accelerator, tag: str, grid: Image.Image, step: int) -> None:
    """A sample grid as an image in every tracker (a batch of one, height x width x RGB)."""
    batch = np.asarray(grid.convert("RGB"))[None]
    for tracker in accelerator.trackers:
        options = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
        tracker.log_images({tag: batch}, step=step, **options)


def flat_config(recipe: Recipe) -> dict:
    """The recipe as `section.key: value`, lists as text: what TensorBoard's hyperparameters take."""
    flat = {}
    for section, values in recipe.model_dump(mode="json", exclude={"profiles"}).items():
        if not isinstance(values, dict):
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat
