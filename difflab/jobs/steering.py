"""Steering a running training job: pause, single step and stop (the worker's JobControl),
and the settings a person may change while it runs (lr, sample_every, log_every).
"""

from __future__ import annotations

import torch

from difflab.recipe import TrainConfig
from difflab.runtime import events
from difflab.runtime.worker import JobContext

# What a running job takes from JobControl.adjust; anything else asked for is ignored.
STEERABLE = ("sample_every", "log_every", "lr")


class Steering:
    """The training loop's side of its JobControl, consulted before each optimizer step."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.control = ctx.control

    def wait_turn(self) -> bool:
        """Block while paused (unless a single step was granted); False once stop was asked."""
        return self.control.wait_turn()

    @property
    def single_stepping(self) -> bool:
        """Paused: each step that runs is a person's single-step request."""
        return self.control.paused

    def adjust(self, cfg: TrainConfig, step: int, optimizer: torch.optim.Optimizer, lr_scheduler) -> TrainConfig:
        """`cfg` with the settings asked for since the last step; a new lr goes into the optimizer now."""
        changes = self.control.take_adjustments()
        if not changes:
            return cfg
        if "lr" in changes:
            _set_base_lr(float(changes["lr"]), optimizer, lr_scheduler)
        known = {k: v for k, v in changes.items() if k in STEERABLE}
        cfg = cfg.model_copy(update=known)
        text = ", ".join(f"{k} = {v}" for k, v in known.items())
        self.ctx.emit(events.LogLine(self.ctx.job_id, f"step {step}: {text}"))
        return cfg


def _set_base_lr(lr: float, optimizer: torch.optim.Optimizer, lr_scheduler) -> None:
    # The schedule multiplies base_lrs by its factor: move the base, keep the shape.
    factor = lr_scheduler.get_last_lr()[0] / max(lr_scheduler.base_lrs[0], 1e-30)
    lr_scheduler.base_lrs = [lr] * len(lr_scheduler.base_lrs)
    for group in optimizer.param_groups:
        group["lr"] = lr * factor
