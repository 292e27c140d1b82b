"""train.log_with: a run also logs to TensorBoard through Accelerate, or says what to install."""

from __future__ import annotations

import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import read_losses, run_cli, tiny_args
from tests.test_headless_run import stop_after


def test_a_tensorboard_run_logs_the_metrics_and_the_sample_grids(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args("train.log_with='tensorboard'", "train.epochs=2")) == 0
    events = EventAccumulator(str(run / "logs" / "train"), size_guidance={"images": 0}).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [step for step, _ in losses] == [2, 4, 6, 8]  # train.log_every = 2, as metrics.jsonl
    assert [value for _, value in losses] == pytest.approx(read_losses(run))
    assert {"lr", "img_per_s"} <= set(events.Tags()["scalars"])
    preview, final = events.Images("samples"), events.Images("final")
    assert [e.step for e in preview] == [4] and [e.step for e in final] == [8]  # train.sample_every = 4
    assert preview[0].width > 8 and preview[0].encoded_image_string.startswith(b"\x89PNG")


def test_a_resumed_run_carries_on_the_same_curve_from_its_checkpoint(tmp_path):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "first",
                   *tiny_args("train.log_with='tensorboard'", "train.epochs=2")) == 0
    recipe = load_recipe(tmp_path / "first" / "recipe.toml")
    run = RunDir.create(tmp_path / "run", recipe)
    stop_after(run, recipe, 6)
    # As if killed after logging step 6 but before its checkpoint: the resume starts at step 4.
    for path in (run.checkpoints / "step_000006").iterdir():
        path.unlink()
    (run.checkpoints / "step_000006").rmdir()
    assert run_cli("run", "--resume", run.path) == 0
    events = EventAccumulator(str(run.logs / "train")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6, 8]  # step 6 once: the first one was purged
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(read_losses(run.path))


def test_a_missing_tracker_package_exits_2_before_training(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "tensorboard"
                        else find_spec(name, *rest))
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args("train.log_with='tensorboard'")) == 2
    assert ("train.log_with = 'tensorboard': the tensorboard package is not installed; "
            "pip install 'difflab[tensorboard]'") in capsys.readouterr().err
    assert not run.exists()  # refused before anything ran: no run folder left behind


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_its_package_exits_2(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "run", *tiny_args("train.log_with='wandb'")) == 2
    assert "train.log_with = 'wandb': the wandb package is not installed; pip install wandb" in capsys.readouterr().err
