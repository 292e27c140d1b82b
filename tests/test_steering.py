"""A person's hand on a running job: a single step reports its own loss, and time spent paused is
not training time (elapsed and throughput leave it out)."""

from __future__ import annotations

import time

from difflab.jobs.training import TrainingJob
from difflab.recipe import load_recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import Worker
from tests.conftest import TINY, paused_from_the_start


def test_single_steps_report_their_own_loss_and_a_pause_is_not_training_time(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    recipe = load_recipe(empty, [*TINY, "train.log_every=100"])  # no log line: the loss can only come from the step
    worker = Worker("cpu")
    handle = paused_from_the_start(worker, TrainingJob(recipe, RunDir.create(tmp_path / "run", recipe)))
    stream = worker.iter_events(handle.job_id)
    losses = []
    for step in (1, 2, 3):
        handle.control.step_once()
        progress = next(e for e in stream if isinstance(e, events.Progress))
        assert progress.step == step
        losses.append(progress.loss)
        if step == 2:
            time.sleep(2.0)  # paused between steps 2 and 3
    handle.control.stop()
    finished = list(stream)[-1]
    worker.shutdown()
    assert all(isinstance(loss, float) for loss in losses) and len(set(losses)) == 3
    assert finished.status == "stopped"
    assert finished.summary["elapsed_s"] < 2.0, finished.summary  # three tiny steps, not the 2 s pause
