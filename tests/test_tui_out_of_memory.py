"""Out of memory in the lab: a notification that says what to change, the lab keeps running, and
the next job starts. The CPU never runs out here, so the training step raises what CUDA raises."""

from __future__ import annotations

import pytest
import torch

from difflab.jobs import training
from tests.test_tui_training import notifications, on_the_training_screen, state, until

pytestmark = pytest.mark.anyio


async def test_out_of_memory_is_a_notification_with_what_to_change_and_the_next_job_starts(tmp_path, monkeypatch):
    original, raised = training._Training.train_step, []

    def first_step_runs_out(self, micro_batches):
        if not raised:
            raised.append(self.state.step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, micro_batches)

    monkeypatch.setattr(training._Training, "train_step", first_step_runs_out)
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not screen.running and raised, "the out-of-memory failure")
        assert state(screen) == "failed"
        await until(pilot, lambda: any("out of memory" in m for m in notifications(app)), "the notification")
        message = next(m for m in notifications(app) if "out of memory" in m)
        assert "smaller train.batch_size (now 16)" in message and "gradient_accumulation = 2" in message
        assert "bf16" in message

        await pilot.press("ctrl+r")  # the same lab, the same worker: the next job trains
        await until(pilot, lambda: screen.curve.steps, "a logged loss from the second start")
        screen.stop()
        await until(pilot, lambda: not screen.running, "the stop")
        assert state(screen) == "stopped"
