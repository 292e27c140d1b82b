"""The training screen, driven with Textual's Pilot: train a tiny model, pause it, step it,
change its learning rate, leave and come back, stop it, and recover from a failed start."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.widgets import Input, Static

from difflab.recipe import load_recipe, save_recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.screens.app import DifflabApp
from difflab.screens.training import TrainingScreen
from difflab.screens.training_stats import LossCurve
from difflab.screens.widgets import LivePlot
from tests.conftest import TINY, wait_for_probe

pytestmark = pytest.mark.anyio

# Far more steps than the story needs (it stops the job), so a fast machine cannot finish first.
LONG = ["train.epochs=500", "train.checkpoint_every=10"]


def tiny_recipe(tmp_path: Path) -> Path:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    path = tmp_path / "tiny.toml"
    save_recipe(load_recipe(empty, TINY + LONG), path)
    return path


@contextlib.asynccontextmanager
async def on_the_training_screen(tmp_path: Path, monkeypatch):
    """The lab on the tiny recipe, opened on the training screen; runs/ lands in tmp_path."""
    monkeypatch.chdir(tmp_path)
    app = DifflabApp(tiny_recipe(tmp_path))
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("4")
        assert isinstance(app.screen, TrainingScreen)
        yield app, pilot, app.screen


async def until(pilot, condition, what: str, timeout: float = 60.0) -> None:
    """Let the app run until `condition()` holds (polls the UI; never a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await pilot.pause(0.1)


async def steady_step(pilot, screen: TrainingScreen) -> int:
    """The step shown once it stopped changing over several drains (the job is paused)."""
    seen = [-1]
    while len(seen) < 6 or len(set(seen[-5:])) > 1:
        await pilot.pause(0.1)
        seen.append(screen.stats.step)
        assert len(seen) < 300, "the step count kept changing while paused"
    return seen[-1]


def state(screen: TrainingScreen) -> str:
    return screen.stats.state


def log_text(screen: TrainingScreen) -> str:
    """The log as one text: its lines are wrapped to the log's width."""
    return " ".join(" ".join(str(line.text).split()) for line in screen.query_one("#log").lines)


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def test_train_pause_step_adjust_leave_and_stop(tmp_path, monkeypatch):
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        assert isinstance(screen, TrainingScreen) and not screen.running
        await pilot.press("ctrl+r")
        assert screen.running and state(screen) == "training"
        await until(pilot, lambda: len(screen.curve.steps) >= 3 and screen.query_one("#preview").image is not None
                    and screen.checkpoints and screen.query_one("#levels").data,
                    "losses, a preview, a checkpoint and the loss by noise level")
        assert screen.query_one("#loss").size.width > 0
        assert "img/s" in str(screen.query_one("#stats", Static).render())
        assert " parameters" in log_text(screen)

        await pilot.press("p")
        assert state(screen) == "paused"
        paused_at = await steady_step(pilot, screen)
        await pilot.press("n")  # the first single step also reports the step the pause caught
        await until(pilot, lambda: screen.stats.step > paused_at, "a single step")
        before = screen.stats.step
        await pilot.press("n")
        await until(pilot, lambda: screen.stats.step > before, "a second single step")
        assert await steady_step(pilot, screen) == before + 1

        screen.query_one("#field-train-lr").query_one(Input).value = "0.005"
        await pilot.pause(0.1)
        assert app.recipe.train.lr == 0.005
        await pilot.press("p")
        await until(pilot, lambda: screen.stats.lr == pytest.approx(0.005), "a logged step at the new lr")

        await pilot.press("1")
        assert app.current_mode == "dataset"
        step_when_left = screen.stats.step
        await until(pilot, lambda: screen.stats.step > step_when_left, "training while another screen shows")
        assert app.set_recipe_value("dataset.limit", 300) == ""
        await wait_for_probe(pilot)  # the dataset probe runs beside the job, not after it
        assert screen.running and "300 images" in str(app.screen.query_one("#facts").render())
        await pilot.press("4")
        assert app.screen is screen and screen.running

        await pilot.press("x")
        await until(pilot, lambda: not screen.running, "the stop")
        assert state(screen) == "stopped"
        # App.notify posts a Notify message: the notification is listed once the app has handled it
        await until(pilot, lambda: any(message.startswith("stopped") for message in notifications(app)),
                    "the stopped notification")
        step, last = screen.checkpoints[-1]
        assert (last / "model.safetensors").is_file() and last.parent.parent == screen.run_path
        assert step == screen.stats.step  # the stop wrote a checkpoint at the step it stopped on
        assert "lr = 0.005" in log_text(screen)

        logged_before = list(screen.curve.steps)
        await pilot.press("c")  # continue the stopped run from the checkpoint it wrote
        assert screen.running and screen.run_path == last.parent.parent
        # the curve so far, read back from metrics.jsonl, then the new steps
        assert screen.curve.steps[:len(logged_before)] == logged_before
        await until(pilot, lambda: screen.stats.step > step, "a step after the resume")
        assert "resumed from step" in log_text(screen)
        screen.stop()
        await until(pilot, lambda: not screen.running, "the second stop")
        assert screen.curve.steps == sorted(set(screen.curve.steps))  # no step logged twice


async def test_a_failed_start_is_reported_and_the_next_start_works(tmp_path, monkeypatch):
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        assert app.set_recipe_value("dataset.source", "folder") == ""
        assert app.set_recipe_value("dataset.path", "no-such-folder") == ""
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not screen.running, "the failure")
        assert state(screen) == "failed"
        await until(pilot, lambda: any("no-such-folder" in message for message in notifications(app)),
                    "the failure's notification")

        assert app.set_recipe_value("dataset.source", "digits") == ""
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.curve.steps, "a logged loss from the second start")
        screen.stop()
        await until(pilot, lambda: not screen.running, "the stop")
        assert state(screen) == "stopped"


async def test_a_diverging_job_is_a_notification_with_a_suggestion_and_the_lab_goes_on(tmp_path, monkeypatch):
    import difflab.jobs.session  # where the training session looks build_model up

    build_model = difflab.jobs.session.build_model

    def diverging_model(recipe, *args):
        """The recipe's model, whose output turns to NaN from its 5th forward pass on.

        No allowed setting makes the tiny model diverge within a test's time (lr is capped at 1)."""
        model, calls = build_model(recipe, *args), []

        def hook(module, args, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 5 else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(difflab.jobs.session, "build_model", diverging_model)
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not screen.running, "the divergence")
        assert state(screen) == "failed"
        await until(pilot, lambda: any("diverged" in m for m in notifications(app)), "the divergence's notification")
        failed = [m for m in notifications(app) if "diverged" in m]
        assert failed and "loss became" in failed[0] and "Try a lower train.lr" in failed[0], notifications(app)
        assert "Try: " not in failed[0]  # the engine named the change; the screen adds no second one
        await pilot.press("1")
        assert app.current_mode == "dataset"  # still answering keys


async def test_the_stats_ask_for_a_layout_only_when_they_wrap_to_another_number_of_rows(tmp_path, monkeypatch):
    async with on_the_training_screen(tmp_path, monkeypatch) as (_app, pilot, screen):
        stats = screen.query_one("#stats", Static)
        screen.stats.state, screen.stats.total, screen.stats.images_per_sec = "training", 1000, 900.0
        screen._show_stats()
        await pilot.pause()
        assert stats.size.height == 2
        layouts = []
        refresh = stats.refresh
        monkeypatch.setattr(stats, "refresh", lambda *a, **k: (layouts.append(k.get("layout")), refresh(*a, **k))[1])
        screen.stats.step, screen.stats.images_per_sec = 999, 12345.0  # longer numbers, still two rows
        screen._show_stats()
        assert True not in layouts
        screen.stats.images_per_sec, screen.stats.memory_bytes = 1e15, 10**20  # too long: a third row
        screen._show_stats()
        assert True in layouts
        await pilot.pause()
        assert stats.size.height == 3


async def test_the_loss_plot_keeps_only_the_x_labels_it_has_room_for():
    for width, at_least in ((80, 2), (160, 5)):  # the loss plot shares its row with the preview
        app = DifflabApp()
        async with app.run_test(size=(width, 24)) as pilot:
            await pilot.press("4")
            await pilot.pause(0.3)
            plot = app.screen.query_one("#loss", LivePlot)
            for low, high in ((0, 1), (10, 45), (100, 12_345)):
                plot.set_xlimits_with_room(low, high)
                await pilot.pause(0.1)
                labels = plot.query_one("#margin-bottom").render_line(0).text.split()
                assert len(labels) >= at_least, (width, labels)
                assert all(re.fullmatch(r"[0-9.,]+", label) for label in labels), labels  # none ran together


def test_the_loss_curve_is_smoothed_and_thinned_for_the_plot():
    curve = LossCurve()
    for step in range(1, 1001):
        curve.add(step, 1.0 if step % 2 else 0.0)  # a loss jumping between 0 and 1
    steps, raw, smooth = curve.points(width=50, log=False)
    assert len(steps) <= 100 and steps[0] == 1 and steps[-1] == 1000
    assert max(raw) == 1.0 and 0.4 < smooth[-1] < 0.6  # the moving average sits in the middle
    assert curve.points(width=50, log=True)[1][0] == 0.0  # log10(1)


def test_the_training_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    async def settle(pilot):
        await pilot.press("4")
        await until(pilot, lambda: pilot.app.device_label != "…", "the device probe")
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause(0.1)

    assert snap_compare(DifflabApp(), terminal_size=(100, 32), run_before=settle)


async def test_quitting_while_training_asks_and_stopping_writes_a_checkpoint(tmp_path, monkeypatch):
    from textual.containers import Vertical
    from textual.widgets import Label

    from difflab.screens.dialogs import ConfirmQuitScreen

    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.curve.steps, "a logged loss")
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, ConfirmQuitScreen)
        question, box = app.screen.query_one(Label), app.screen.query_one(Vertical)
        assert question.size.height >= 2 and "--resume" in str(question.render())  # wrapped, not cut off
        assert box.size.height < 12  # the dialog is as tall as its question and buttons
        labels = [str(button.label) for button in app.screen.query("Button")]
        assert labels == ["Stop and quit (y)", "Keep training (n)"]  # the keys show
        await pilot.press("n")
        assert app.screen is screen and screen.running  # kept training
        await pilot.press("ctrl+q")
        await pilot.press("y")
        await until(pilot, lambda: not screen.running, "the stop before quitting")
        await until(pilot, lambda: not app.is_running, "the app to exit")
    step, last = screen.checkpoints[-1]
    assert (last / "model.safetensors").is_file() and step == screen.stats.step


# ---------------------------------------------------------------- every figure after each transition
# The job's events as the worker sends them, to a screen whose job is a stand-in: what a stop, a
# single step, a resume and a continue do to the figures is seen exactly, with no race against torch.


class StandInControl:
    """JobControl's methods, recording what the screen asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.asked.append(name)


def stats_text(screen: TrainingScreen) -> str:
    return " ".join(str(screen.query_one("#stats", Static).render()).split())


def table_rows(screen: TrainingScreen) -> list[tuple[str, str]]:
    table = screen.query_one("#checkpoints")
    return [tuple(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]


def a_checkpoint(run: RunDir, step: int) -> Path:
    folder = run.checkpoints / f"step_{step:06d}"
    folder.mkdir(parents=True)
    return folder


@contextlib.asynccontextmanager
async def a_job_at_step_50_of_100(tmp_path: Path, monkeypatch):
    """The training screen with a job 50 steps (10 s) into 100, a checkpoint at step 40 on disk."""
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        run = RunDir.create(tmp_path / "runs" / "job", app.recipe)
        a_checkpoint(run, 40)
        monkeypatch.setattr(app.bridge, "submit", lambda job, on_event: SimpleNamespace(control=StandInControl()))
        screen._start_fresh(run)
        screen._launch(None)
        screen._on_event(events.JobStarted(1, "training", "cpu", total_steps=100))
        screen._on_event(events.StepLogged(1, step=50, epoch=1, loss=0.25, lr=1e-3, images_per_sec=320.0,
                                           elapsed=10.0))
        screen._redraw(force=True)
        await pilot.pause()
        yield app, pilot, screen, run


async def test_a_stop_says_stopping_then_stopped_and_drops_the_eta(tmp_path, monkeypatch):
    async with a_job_at_step_50_of_100(tmp_path, monkeypatch) as (_app, pilot, screen, run):
        assert "ETA 0:10" in stats_text(screen) and table_rows(screen) == [("40", "step_000040")]
        await pilot.press("x")
        assert screen._handle.control.asked == ["stop"]
        assert stats_text(screen).startswith("stopping: writing a checkpoint…") and "ETA" not in stats_text(screen)
        checkpoint = a_checkpoint(run, 51)
        screen._on_event(events.CheckpointSaved(1, 51, checkpoint))
        screen._on_event(events.JobFinished(1, "stopped"))
        await pilot.pause()
        assert state(screen) == "stopped" and "ETA" not in stats_text(screen)
        assert "step 51/100" in stats_text(screen)
        assert table_rows(screen) == [("40", "step_000040"), ("51", "step_000051")]  # all on disk


async def test_a_single_step_shows_its_step_and_loss_at_once_and_resume_brings_the_eta_back(tmp_path, monkeypatch):
    async with a_job_at_step_50_of_100(tmp_path, monkeypatch) as (_app, pilot, screen, _run):
        await pilot.press("p")
        assert state(screen) == "paused" and "ETA" not in stats_text(screen)
        await pilot.press("n")
        assert screen._handle.control.asked == ["pause", "step_once"]
        screen._on_event(events.Progress(1, step=51, total_steps=100, loss=0.125))
        assert "step 51/100" in stats_text(screen) and "loss 0.125" in stats_text(screen)  # no timer tick needed
        await pilot.press("p")
        assert state(screen) == "training" and "ETA" in stats_text(screen)


async def test_continue_shows_the_runs_figures_and_checkpoints_from_disk_before_its_first_step(tmp_path, monkeypatch):
    async with on_the_training_screen(tmp_path, monkeypatch) as (app, pilot, screen):
        run = RunDir.create(tmp_path / "runs" / "earlier", app.recipe)
        for step in (200, 250):
            a_checkpoint(run, step)
        for step, elapsed in ((240, 47.5), (250, 49.0), (260, 51.0)):  # 260: logged after the checkpoint
            run.append_metrics({"step": step, "epoch": 3, "loss": step / 1000, "lr": 2e-4, "img_per_s": 300.0,
                                "elapsed": elapsed})
        launched = []
        monkeypatch.setattr(app.bridge, "submit",
                            lambda job, on_event: launched.append(job) or SimpleNamespace(control=StandInControl()))
        screen.continue_run(run.path)  # as the run-folder dialog (c) does
        await pilot.pause()
        assert launched and state(screen) == "training"
        text = stats_text(screen)
        assert "step 250/" in text and "epoch 4" in text and "loss 0.25 " in text and "lr 0.0002" in text
        assert "elapsed 0:49" in text and "300 img/s" in text
        assert table_rows(screen) == [("200", "step_000200"), ("250", "step_000250")]
        assert screen.curve.steps == [240, 250]  # the curve up to the checkpoint; 260 is trained again


async def test_the_finished_runs_sample_quality_is_written_to_the_log(tmp_path, monkeypatch):
    async with a_job_at_step_50_of_100(tmp_path, monkeypatch) as (_app, pilot, screen, _run):
        quality = {"sampler": "toy", "steps": 40, "frechet_normalised": 0.125, "confidence": 0.875,
                   "class_entropy_bits": 3.1, "class_entropy_max_bits": 3.32}
        screen._on_event(events.JobFinished(1, "finished", {"eval": quality}))
        await pilot.pause()
        assert "sample quality (toy, 40 steps): FD norm. 0.125" in log_text(screen)
        assert "classes 3.10 of 3.32 bits" in log_text(screen) and state(screen) == "finished"


async def test_a_vae_run_shows_its_loss_terms_its_latent_channels_and_its_report(tmp_path, monkeypatch):
    from PIL import Image

    from difflab.diffusion.vae_report import VaeReport
    from tests.test_tui_fit import cut_widgets

    async with a_job_at_step_50_of_100(tmp_path, monkeypatch) as (_app, pilot, screen, run):
        parts, levels = screen.query_one("#parts", Static), screen.query_one("#levels")
        assert levels.display and not parts.display  # a denoiser's loss by noise level
        screen._on_event(events.StepLogged(1, step=60, epoch=1, loss=0.0124, lr=1e-3, images_per_sec=300.0,
                                           elapsed=12.0, parts={"reconstruction": 0.0123, "kl": 98.5}))
        screen._redraw(force=True)
        await pilot.pause()
        assert parts.display and not levels.display  # a VAE has no noise level: its loss's terms instead
        assert " ".join(str(parts.render()).split()) == "loss terms: reconstruction 0.0123 · kl 98.5"

        figure = Image.new("RGB", (96, 40), "gray")
        screen._on_event(events.PreviewReady(1, 100, figure, run.samples / "latents.png", title="latent channels"))
        assert "latent channels · step 100" in str(screen.query_one("#preview-title").render())
        report = VaeReport((3, 32, 32), (4, 8, 8), 2744, 256, 0.003, 25.23, 26.1, [0.1, -0.2, 0.3, 0.0],
                           [1.3, 1.4, 1.2, 1.5], 1.346, 0.743)
        screen._on_event(events.JobFinished(1, "finished", {"vae": {**report.as_summary(), "folder": "RUN/vae"}}))
        await pilot.pause()
        logged = log_text(screen)
        assert "3x32x32 images -> 4x8x8 latents, 12x fewer numbers" in logged
        assert "(256 images it never trained on): MSE 0.00300, PSNR 25.23 dB (on training images 26.10 dB)" in logged
        assert "scaling factor 0.743 = 1 / 1.346" in logged and state(screen) == "finished"
        assert "VAE: held-out PSNR 25.23 dB (MSE 0.00300) · 4x8x8 latents, 12x fewer numbers · scaling factor " \
               "0.743" in stats_text(screen)
        assert cut_widgets(screen) == []
        await pilot.resize_terminal(80, 24)
        screen.query_one("#log").clear()  # a log keeps the width its lines were written at
        screen._on_event(events.JobFinished(1, "finished", {"vae": {**report.as_summary(), "folder": "RUN/vae"}}))
        await pilot.pause(0.2)
        assert cut_widgets(screen) == []

        screen._start_fresh(run)  # the next run starts without the last one's terms
        await pilot.pause()
        assert levels.display and not parts.display
