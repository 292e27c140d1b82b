"""Continue in the lab (c on the Train screen) on a run killed before its first checkpoint: it
starts again from step 0 with its saved recipe and says so, as `difflab run --resume` does."""

from __future__ import annotations

import pytest

from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY
from tests.test_tui_training import LONG, notifications, on_the_training_screen, state, until

pytestmark = pytest.mark.anyio


async def test_continuing_a_run_with_no_checkpoint_starts_it_again_from_step_0(tmp_path, monkeypatch):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    recipe = load_recipe(empty, TINY + LONG)
    run = RunDir.create(tmp_path / "killed", recipe)
    run.append_metrics({"step": 2, "epoch": 0, "loss": 9.0, "lr": 0.001})  # logged, then killed before step 4
    run.release()
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        screen.continue_run(run.path)
        await until(pilot, lambda: any("starts again from step 0" in m for m in notifications(app)), "the notice")
        await until(pilot, lambda: screen.curve.steps, "a logged loss")
        assert 9.0 not in screen.curve.raw  # the killed run's metrics were cleared with it
        screen.stop()
        await until(pilot, lambda: not screen.running, "the stop")
        assert state(screen) == "stopped"


async def test_the_sampling_screen_samples_a_stopped_run_from_its_checkpoint_and_says_which(tmp_path, monkeypatch):
    from textual.widgets import Input

    from tests.test_headless_run import stop_after
    from tests.test_tui_sampling import errors, wait_for_worker

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    recipe = load_recipe(empty, TINY)
    run = RunDir.create(tmp_path / "stopped", recipe)
    stop_after(run, recipe, 4)
    run.release()
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        await pilot.press("5")
        app.screen.query_one("#source", Input).value = str(run.path)
        app.screen.query_one("#steps", Input).value = "3"
        await pilot.pause(0.1)
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert errors(app) == []
        assert any("using the step 4 checkpoint" in m for m in notifications(app)), notifications(app)
