"""Training screen: start, pause, single-step and stop a training job; watch it learn.

Everything shown comes from the job's events (StepLogged, LossByNoiseLevel, PreviewReady,
CheckpointSaved, LogLine); the screen computes nothing torch-related. The job belongs to
the app's worker, not to this screen: switching screens leaves it running.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Label, RichLog, Sparkline, Static
from textual_plot import HiResMode

from difflab.errors import DifflabError
from difflab.jobs import launch
from difflab.runtime import events
from difflab.runtime.runs import RunDir, default_run_dir

from .dialogs import RunFolderScreen
from .picture import Picture, PictureViewer
from .training_stats import LossCurve, TrainingStats, parts_line, quality_line, vae_lines
from .widgets import LivePlot, RecipeField, ScreenBar, StatusLine, margin_plot

# While a job trains, each millisecond of the UI thread is taken from torch's threads (on 2
# cores, out of proportion: measured in benchmarks/lab_responsiveness.py), and every frame
# costs a few ms however little changed. So what changed is drawn together, in one frame:
REDRAW_S = 0.5  # stats and loss plot: twice a second, however fast steps arrive
LEVELS_S = 1.0  # loss by noise level moves slowly: once a second
RAW_STYLE, SMOOTH_STYLE = "#5a6a7a", "#4fc3f7"  # raw points faint, the smoothed curve bright
# What fixes the usual failures; the message itself says what went wrong.
SUGGESTIONS = {"diverged": "lower train.lr or set train.max_grad_norm = 1.0",
               "dataset": "check dataset.source and dataset.path on the dataset screen (1)"}
LIVE_KEYS = ("lr", "sample_every")  # what a running job accepts through JobControl.adjust


class TrainingScreen(Screen):
    """[train]: run the recipe's training job and watch its loss, samples and checkpoints."""

    SCREEN_NAME = "training"
    CSS_PATH = "training.tcss"
    AUTO_FOCUS = None  # a focused input would swallow the single-letter keys below (and 1–5)
    # The keys on the buttons are not repeated in the footer: it keeps room for the rest at 80 columns.
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="training.start", show=False, tooltip="train the recipe into a new run folder"),
        Binding("p", "pause_resume", "Pause/resume", id="training.pause", show=False, tooltip="pause or resume between steps"),
        Binding("n", "step_once", "Step", id="training.step", show=False, tooltip="while paused: run exactly one more step"),
        Binding("x", "stop", "Stop", id="training.stop", show=False, tooltip="stop after writing a checkpoint"),
        Binding("c", "continue_run", "Continue", id="training.continue", show=False,
                tooltip="continue the stopped run from its newest checkpoint (or pick a run folder)"),
        Binding("l", "toggle_log", "Log/linear", id="training.log_scale", tooltip="loss axis: linear or log"),
        Binding("f", "full_screen", "Enlarge", id="training.full_screen",
                tooltip="the preview over the whole terminal (Escape closes)"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._handle = None
        self._paused = False
        self._log_scale = False
        self._sent: dict = {}  # live settings last sent to the running job
        self._stats_dirty = False
        self._levels_due = 0.0  # time.monotonic() after which the noise-level chart may redraw
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self.curve, self.stats = LossCurve(), TrainingStats()
        self.run: RunDir | None = None
        self._plot_dirty = True
        self._levels: list[float] | None = None  # loss by noise level not drawn yet

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield ScreenBar(self.SCREEN_NAME)
        with Horizontal(classes="work"):
            # as LabScreen's: the form is no Tab stop of its own (its fields are)
            with VerticalScroll(classes="form", can_focus=False):
                yield from self.fields()
                yield Static("lr and preview cadence also change a running job; "
                             "the rest applies to the next run.", id="hint")
            with VerticalScroll(classes="output"):
                yield from self.compose_output()
        yield StatusLine()
        yield Footer(compact=True)

    def fields(self) -> list[RecipeField]:
        """The recipe's training knobs."""
        return [
            RecipeField("train.lr", "learning rate (live)"),
            RecipeField("train.sample_every", "preview every N steps (live)"),
            RecipeField("train.epochs", "epochs"),
            RecipeField("train.max_steps", "max steps (0 = all epochs)"),
            RecipeField("train.batch_size", "batch size"),
            RecipeField("train.checkpoint_every", "checkpoint every N steps"),
        ]

    def compose_output(self) -> ComposeResult:
        with Horizontal(id="controls"):
            for button_id, label in (("start", "Start ^r"), ("pause", "Pause p"), ("step", "Step n"),
                                     ("stop", "Stop x"), ("continue", "Continue c")):
                yield Button(label, id=button_id, compact=True)
        yield Static(self.stats.line(), id="stats")
        with Horizontal(id="main"):
            with Vertical(id="charts"):
                yield Label("loss: logged · smoothed", id="loss-title", classes="plot-title")
                yield margin_plot("loss", bottom=2, left=7)
                yield Static(id="parts")  # a VAE's: its loss's terms, where a denoiser's noise levels go
                yield Label("loss by noise level (low → high)", id="levels-title", classes="plot-title")
                yield Sparkline([], id="levels")
            with Vertical(id="preview-box"):
                yield Label("preview", id="preview-title", classes="plot-title")
                yield Picture("preview", id="preview")
        with Horizontal(id="lower"):
            # min_width=1: RichLog wraps at 78 columns or more by default, cutting lines in a narrower log
            log = RichLog(id="log", max_lines=200, wrap=True, markup=False, min_width=1)
            log.can_focus = False  # it follows its newest line; no Tab stop that shows nothing
            yield log
            with Vertical(id="checkpoints-box"):
                yield Label("checkpoints", classes="plot-title")
                yield DataTable(id="checkpoints", show_cursor=False)

    def on_mount(self) -> None:
        table = self.query_one("#checkpoints", DataTable)
        table.add_columns("step", "file")
        self.watch(self.app, "recipe", self._recipe_changed, init=False)
        # ticks only while a job runs and this screen is shown (see _keep_ticking)
        self._ticker = self.set_interval(REDRAW_S, self._redraw, pause=True)
        register = getattr(self.app, "register_training_screen", None)
        if register is not None:  # the app asks before quitting while this screen's job runs
            register(self)
        self._show_state()

    def on_resize(self) -> None:
        self.set_class(self.size.height < 30, "-short")  # a shorter log leaves the charts their rows
        self.set_class(self.size.width < 90, "-narrow")  # the buttons in two rows

    # ------------------------------------------------------------ controls

    @property
    def running(self) -> bool:
        """True from start until the job finished, stopped or failed."""
        return self._handle is not None

    def action_start(self) -> None:
        """Train the recipe as it is now, into a new folder under runs/."""
        if self.running:
            self.notify("a training job is already running; stop it first (x)", severity="warning")
            return
        app = self.app
        try:
            run = RunDir.create(default_run_dir(app.recipe_path or Path("lab.toml")), app.recipe)
        except (DifflabError, OSError) as error:
            self.notify(str(error), title="cannot start training", severity="error", timeout=10)
            return
        self._start_fresh(run)
        self._launch(launch.training(app.recipe, run, app.recipe_dir))

    def action_continue_run(self) -> None:
        """Continue the run this screen stopped; with none, ask which run folder to continue."""
        if self.running:
            self.notify("a training job is already running; stop it first (x)", severity="warning")
        elif self.run is not None and self.run.list_checkpoints():
            self.continue_run(self.run.path)
        else:
            self.app.push_screen(RunFolderScreen(Path.cwd() / "runs"),
                                 lambda path: path and self.continue_run(path))

    def continue_run(self, path: Path) -> None:
        """Resume a run folder from its newest checkpoint, with the recipe saved in it; one killed
        before its first checkpoint starts again from step 0 (as `difflab run --resume` does)."""
        try:
            run, recipe = RunDir.resume(path)  # this lab becomes its one writer; killed writes cleaned up
            newest = run.list_checkpoints()
            if not newest:
                run.restart()
            history = run.read_metrics()
        except (DifflabError, OSError, ValueError) as error:
            self.notify(str(error), title="cannot continue training", severity="error", timeout=10)
            return
        self._start_fresh(run)
        if not newest:
            self.notify(f"{run.path}: no checkpoint yet, so the run starts again from step 0 with its saved recipe",
                        title="continue training", timeout=8)
            self._launch(launch.training(recipe, run, run.path, resume=False))
            return
        resumed_at = int(newest[-1].name.removeprefix("step_"))
        for row in history:  # the curve so far; steps after the checkpoint are trained again
            if row.get("step", resumed_at + 1) <= resumed_at and "loss" in row:
                self.curve.add(row["step"], row["loss"])
        self.stats.continued_from(history, resumed_at)
        self._launch(launch.training(recipe, run, run.path, resume=True))

    def _launch(self, launch) -> None:
        self._handle = self.app.bridge.submit(launch, self._on_event)
        self.stats.state = "training"
        self.stats.list_checkpoints(self.run)
        # live settings go to the job only when they are edited from now on
        self._sent = {key: getattr(self.app.recipe.train, key) for key in LIVE_KEYS}
        self._show_state()
        self._keep_ticking()

    def action_pause_resume(self) -> None:
        if not self.running:
            return
        if self._paused:
            self._handle.control.resume()
        else:
            self._handle.control.pause()
        self._paused = not self._paused
        if self.stats.state in ("training", "paused"):  # a stop asked for stays "stopping"
            self.stats.state = "paused" if self._paused else "training"
        self._show_state()

    def action_step_once(self) -> None:
        """While paused, let the job take exactly one step."""
        if self.running and self._paused:
            self._handle.control.step_once()

    def action_stop(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the running job to stop; it writes a checkpoint, then finishes as "stopped"."""
        if self.running:
            self._handle.control.stop()
            self.stats.state = "stopping"
            self._show_state()

    def action_full_screen(self) -> None:
        """The preview (and any other picture here) over the whole terminal."""
        PictureViewer.show(self, "no preview yet: it comes every train.sample_every steps")

    def action_toggle_log(self) -> None:
        self._log_scale = not self._log_scale
        self._plot_dirty = True
        self._redraw_loss()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {"start": self.action_start, "pause": self.action_pause_resume,
                   "step": self.action_step_once, "stop": self.action_stop, "continue": self.action_continue_run}
        actions[event.button.id]()

    def _show_state(self) -> None:
        """Enable the buttons that make sense now; the stats say what the job is doing."""
        running, paused = self.running, self._paused
        self.query_one("#start", Button).disabled = running
        pause = self.query_one("#pause", Button)
        pause.disabled = not running
        pause.label = "Resume p" if paused else "Pause p"
        self.query_one("#step", Button).disabled = not (running and paused)
        self.query_one("#stop", Button).disabled = not running
        self.query_one("#continue", Button).disabled = running
        self._show_stats()

    # ------------------------------------------------------------ the recipe

    def _recipe_changed(self, recipe) -> None:
        """Show the new values; send lr and preview cadence on to a running job."""
        for recipe_field in self.query(RecipeField):
            if not recipe_field.has_focus_within:
                recipe_field.refresh_value()
        if not self.running:
            return
        changes = {key: value for key in LIVE_KEYS
                   if (value := getattr(recipe.train, key)) != self._sent.get(key)}
        if changes:
            self._handle.control.adjust(**changes)
            self._sent.update(changes)

    # ------------------------------------------------------------ events

    def _on_event(self, event: events.Event) -> None:
        """One event of the training job, on the UI thread (the bridge drains 10 times a second)."""
        handler = {
            events.JobStarted: self._on_started, events.Progress: self._on_progress,
            events.StepLogged: self._on_step_logged, events.LossByNoiseLevel: self._on_levels,
            events.PreviewReady: self._on_preview, events.CheckpointSaved: self._on_checkpoint,
            events.LogLine: self._on_log_line, events.JobFinished: self._on_finished,
            events.JobError: self._on_error,
        }.get(type(event))
        if handler is not None:
            handler(event)

    def _on_started(self, event: events.JobStarted) -> None:
        self.stats.total, self.stats.start_step, self.stats.step = event.total_steps, event.start_step, event.start_step
        trained = ""
        if event.parameters:  # with LoRA only the adapters train: say how few
            trained = (f"; {event.trainable_parameters:,} of {event.parameters:,} parameters train"
                       if event.trainable_parameters != event.parameters else f"; {event.parameters:,} parameters")
        self.query_one("#log", RichLog).write(f"training on {event.device}: {event.total_steps:,} steps "
                                              f"into {self.run.path}{trained}")
        self._show_stats()

    def _on_progress(self, event: events.Progress) -> None:
        s = self.stats
        s.step, s.total = event.step, event.total_steps
        if event.loss is not None and self._paused:  # a single step's loss: no log line may follow soon
            s.loss = event.loss
        s.images_per_sec = event.images_per_sec if event.images_per_sec is not None else s.images_per_sec
        self._stats_dirty = True
        if self._paused:  # the timer runs, but a single step should show at once
            self._redraw()

    def _on_step_logged(self, event: events.StepLogged) -> None:
        s = self.stats
        s.step, s.epoch, s.loss, s.lr = max(s.step, event.step), event.epoch, event.loss, event.lr
        s.images_per_sec, s.elapsed, s.memory_bytes = event.images_per_sec, event.elapsed, event.memory_bytes
        if event.parts and not s.parts:
            self.set_class(True, "-parts")  # once: the terms take the noise levels' place
        s.parts = event.parts
        self.curve.add(event.step, event.loss)
        # drawn by the timer: a burst of steps costs one frame, not one per drain
        self._plot_dirty = self._stats_dirty = True

    def _on_levels(self, event: events.LossByNoiseLevel) -> None:
        known = [loss for loss in event.losses if loss is not None]
        if known:  # an empty bucket draws as the lowest bar rather than a gap; drawn on the next tick
            self._levels = [loss if loss is not None else min(known) for loss in event.losses]

    def _on_preview(self, event: events.PreviewReady) -> None:
        title = f"{event.title or 'preview'} · step {event.step:,}"  # a VAE's last figure: its latent channels
        preview = self.query_one("#preview", Picture)
        preview.image, preview.title = event.image, title
        self.query_one("#preview-title", Label).update(title)

    def _on_checkpoint(self, event: events.CheckpointSaved) -> None:
        """List the checkpoints on disk: the run keeps only the newest train.keep_checkpoints."""
        self.stats.list_checkpoints(self.run)
        # progress is throttled: a stop's checkpoint can be the first news of the last steps
        self.stats.step = max(self.stats.step, event.step)
        self._stats_dirty = True
        self._show_checkpoints()

    def _show_checkpoints(self) -> None:
        table = self.query_one("#checkpoints", DataTable)
        rows = [(f"{step:,}", path.name) for step, path in self.stats.checkpoints]
        if [tuple(map(str, table.get_row_at(i))) for i in range(table.row_count)] != rows:
            table.clear()
            table.add_rows(rows)

    def _on_log_line(self, event: events.LogLine) -> None:
        self.query_one("#log", RichLog).write(event.text)

    def _on_finished(self, event: events.JobFinished) -> None:
        log = self.query_one("#log", RichLog)
        if quality := quality_line(event.summary):
            log.write(quality)
        for line in vae_lines(event.summary):
            log.write(line)
        self.stats.vae = event.summary.get("vae")
        self._job_ended(event.status)
        self.notify(f"{event.status}: {self.run.path}", title="training")

    def _on_error(self, event: events.JobError) -> None:
        self._job_ended("failed")
        hint = _suggestion(event.message)
        self.notify(event.message + (f"\n{hint}" if hint else ""), title="training failed",
                    severity="error", timeout=15)

    def _job_ended(self, outcome: str) -> None:
        self._handle, self._paused, self.stats.state = None, False, outcome
        if self.run is not None:
            self.stats.list_checkpoints(self.run)
        self._show_state()
        self._redraw(force=True)  # the last losses, then the timer rests
        self._keep_ticking()

    # ------------------------------------------------------------ drawing

    def _start_fresh(self, run: RunDir) -> None:
        """Clear the last run's curves, preview, checkpoints and log."""
        self._reset_run_state()
        self.run = run
        self.query_one("#log", RichLog).clear()
        self.query_one("#levels", Sparkline).data = []
        self.set_class(False, "-parts")
        self.query_one("#parts", Static).update("")
        self.query_one("#preview", Picture).image = None
        self.query_one("#preview-title", Label).update("preview")
        self._show_stats()

    @property
    def run_path(self) -> Path | None:
        """The folder of the run shown (the one started or continued last)."""
        return self.run.path if self.run is not None else None

    @property
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of each checkpoint of the run on disk."""
        return self.stats.checkpoints

    def _show_stats(self) -> None:
        """Draw every figure from the stats object: the stats line and the checkpoints table."""
        self._show_checkpoints()
        if self.stats.parts:
            self.query_one("#parts", Static).update(parts_line(self.stats.parts), layout=False)
        stats = self.query_one("#stats", Static)
        stats.update(self.stats.line(), layout=False)
        # A layout pass reflows the whole screen (~10 ms here): ask for one only when the new
        # text wraps to a different number of rows, not each time a number grows a digit.
        size = stats.content_size
        if size.width and stats.get_content_height(size, self.size, size.width) != size.height:
            stats.refresh(layout=True)

    def _keep_ticking(self) -> None:
        """Run the redraw timer only while there is something to draw and a person to see it."""
        if self.running and self.is_current:
            self._ticker.resume()
        else:
            self._ticker.pause()

    def _redraw(self, force: bool = False) -> None:
        """The timer's tick: whatever changed and is due reaches the screen together, in one frame."""
        if not self.is_current:
            return
        if self._stats_dirty:
            self._stats_dirty = False
            self._show_stats()
        if self._levels is not None and (force or time.monotonic() >= self._levels_due):
            self.query_one("#levels", Sparkline).data, self._levels = self._levels, None
            self._levels_due = time.monotonic() + LEVELS_S - REDRAW_S / 2  # timer ticks jitter
        self._redraw_loss()

    def _redraw_loss(self) -> None:
        """Replot the loss curve if new losses came in (only while this screen is shown)."""
        if not (self._plot_dirty and self.is_current):
            return
        self._plot_dirty = False
        with self.query_one("#loss", LivePlot).redraw() as plot:
            self._plot_curve(plot)

    def _plot_curve(self, plot: LivePlot) -> None:
        plot.clear()
        # the plot's own y label has no room in a narrow margin: the title says the scale
        scale = "log₁₀ loss" if self._log_scale else "loss"
        title = self.query_one("#loss-title", Label)
        if str(title.content) != (text := f"{scale}: logged · smoothed"):  # unchanged text: no layout pass
            title.update(text)
        if not self.curve.steps:
            plot.set_xlimits_with_room(0, 1)
            return
        steps, raw, smooth = self.curve.points(plot.size.width, self._log_scale)
        plot.plot(steps, raw, line_style=RAW_STYLE, hires_mode=HiResMode.BRAILLE)
        plot.plot(steps, smooth, line_style=SMOOTH_STYLE, hires_mode=HiResMode.BRAILLE)
        plot.set_xlimits_with_room(steps[0], max(steps[-1], steps[0] + 1))
        plot.set_ylimits_with_room(*_y_range(raw + smooth))

    def on_screen_resume(self) -> None:
        self._plot_dirty = self._stats_dirty = True  # what came in while another screen was shown
        self._redraw(force=True)
        self._keep_ticking()

    def on_screen_suspend(self) -> None:
        self._ticker.pause()  # what arrives meanwhile waits in the model (curve, stats) until resume



def _y_range(values: list[float]) -> tuple[float, float]:
    """Limits around the values, never empty: textual-plot's tick labels fail on a zero-height range."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.05, abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


def _suggestion(message: str) -> str:
    lowered = message.lower()
    if "try " in lowered or "try:" in lowered:  # the engine already named the fitting change
        return ""
    if "diverged" in lowered or "nan" in lowered:
        return "Try: " + SUGGESTIONS["diverged"]
    if "dataset" in lowered or "folder" in lowered or "not found" in lowered:
        return "Try: " + SUGGESTIONS["dataset"]
    return ""
