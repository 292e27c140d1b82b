"""Sampling screen: sample a run or a saved pipeline and step through it, x_t beside predicted x0.

The course's side-by-side figure, scrubbed with the arrow keys; the same seed under
a second sampler shows where two trajectories part. The work runs on the worker as a
StepThroughJob; this screen only shows the grids it returns and asks the worker to save.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from difflab.jobs import launch
from difflab.jobs.stepthrough import SaveStepThroughJob, StepThroughJob, samplers_for
from difflab.recipe import GUIDANCE_FUNCTIONS, SAMPLERS
from difflab.runtime.events import Event, JobError, JobFinished, LogLine, PreviewReady, Progress

from .base import LabScreen
from .picture import Picture, PictureViewer

NO_COMPARISON = "none"
LATENT_HEADING = "latent x_t"
# What the x_t and x0 pictures are called: a latent model's are decoded through its VAE.
HEADINGS = {False: ("model input x_t", "predicted x0"), True: ("x_t decoded", "predicted x0 decoded")}
# Each number field: its type, lowest and highest value (eta: DDIM's 0 deterministic .. 1 as noisy as DDPM).
NUMBERS = {"steps": (int, 1, None), "eta": (float, 0.0, 1.0), "seed": (int, 0, None), "images": (int, 1, None),
           "class": (int, 0, None), "cfg": (float, 0.0, None), "strength": (float, 0.0, None)}


class StepView(Vertical, can_focus=True):
    """The step-through: focusable, so the arrow keys reach the screen instead of a form field."""


class SamplingScreen(LabScreen):
    """Sample from a run or a pipeline; scrub through the steps; compare two samplers from one seed."""

    SCREEN_NAME = "sampling"
    CSS_PATH = "sampling.tcss"
    COMPACT_FOOTER = True
    BINDINGS = [
        # Sample and Sweep are buttons that show their keys: the footer keeps room for the rest
        Binding("ctrl+r", "sample", "Sample", id="sampling.run", show=False, tooltip="sample with these settings"),
        # priority: the scrolling pane around the step-through would take them to scroll; a field
        # being edited still gets them (check_action)
        Binding("left", "scrub(-1)", "Step back", id="sampling.back", show=False, priority=True,
                tooltip="the step before"),
        Binding("right", "scrub(1)", "Step on", id="sampling.next", show=False, priority=True,
                tooltip="the step after"),
        Binding("home", "scrub_to(0)", "First", id="sampling.first", show=False, priority=True,
                tooltip="the first step"),
        Binding("end", "scrub_to(-1)", "Last", id="sampling.last", show=False, priority=True,
                tooltip="the last step"),
        Binding("ctrl+g", "save", "PNG+GIF", id="sampling.save", tooltip="save the grids and the GIFs"),
        Binding("ctrl+e", "sweep", "Sweep", id="sampling.sweep", show=False,
                tooltip="one labelled grid, a row per value of the sweep field"),
        Binding("f", "full_screen", "Enlarge", id="sampling.full_screen",
                tooltip="the pictures over the whole terminal, one at a time (Escape closes)"),
    ]

    step: reactive[int] = reactive(0, init=False)
    """The step shown, 0-based (a model call: Heun makes two per step but the first)."""

    def fields(self):
        sample = self.app.recipe.sample
        yield Label("source: run or pipeline folder", classes="field-label")
        source = str(newest_run() or "")
        yield Input(source, placeholder="runs/my-run", id="source")
        self._samplers = _samplers_for(source)
        yield Label("sampler", classes="field-label")
        yield Select([(s, s) for s in self._samplers], value=_fitting(sample.sampler, self._samplers),
                     allow_blank=False, id="sampler")
        yield Label("compare with (same seed)", classes="field-label")
        yield Select([(s, s) for s in (NO_COMPARISON, *self._samplers)], value=NO_COMPARISON,
                     allow_blank=False, id="compare")
        with Horizontal(classes="numbers"):
            yield from _number("steps", sample.steps)
            yield from _number("eta", sample.eta)
        with Horizontal(classes="numbers"):
            yield from _number("seed", sample.seed)
            yield from _number("images", sample.trajectory_images)
        with Horizontal(classes="numbers"):  # class-conditional models: which class, how hard (CFG)
            yield from _number("class", "", placeholder="none")
            yield from _number("cfg", sample.guidance_scale, label="CFG scale")
        yield Label("loss guidance", classes="field-label")
        guidance = self.app.recipe.guidance
        yield Select([(name, name) for name in GUIDANCE_FUNCTIONS], value=guidance.function,
                     allow_blank=False, id="guidance")
        yield from _number("strength", guidance.scale, label="guidance scale")
        yield Label("sweep (ctrl+e): a row per value", classes="field-label")
        yield Input("guidance_scale=0,1,3,7", id="sweep",
                    tooltip="any \\[sample] or \\[guidance] key, class=all (a row per class) or checkpoint=all")
        with Horizontal(id="buttons"):
            yield Button("Sample ^r", id="sample", variant="primary", tooltip="ctrl+r")
            yield Button("Sweep ^e", id="sweep-button", tooltip="ctrl+e")

    def compose_output(self) -> ComposeResult:
        yield ProgressBar(id="progress", show_eta=False)
        with StepView(id="step-through"):
            yield Static("Pick a source and press ctrl+r: each step's model input x_t appears beside "
                         "the model's prediction of the clean image x0.", id="step-label")
            with Horizontal(id="headings"):
                yield Label(LATENT_HEADING, classes="latent")
                yield Label("model input x_t", id="heading-x-t")
                yield Label("predicted x0", id="heading-x0")
            for row in ("first", "second"):
                with Vertical(id=f"row-{row}", classes="sampler-row"):
                    yield Label("", classes="sampler-name")
                    with Horizontal(classes="pair"):
                        yield Picture(classes="image latent")
                        yield Picture(classes="image x-t")
                        yield Picture(classes="image x0")
            yield Label("final images", id="final-title", classes="section-title")
            with Horizontal(id="finals"):
                yield Picture(id="final-first", classes="image")
                yield Picture(id="final-second", classes="image")

    def on_mount(self) -> None:
        # LabScreen.on_mount also runs (Textual dispatches on_mount along the MRO)
        self.result: dict | None = None
        self._sampling_id: int | None = None
        self.query("#probe-loading, #progress, #headings, .sampler-row, #final-title, #finals, .latent").set(
            display=False)

    @property
    def sampling(self) -> bool:
        """True while a step-through or a save runs on the worker (tests wait on this)."""
        return self._sampling_id is not None

    @on(Input.Changed, "#source")
    def _offer_the_sources_samplers(self, event: Input.Changed) -> None:
        """A run trained on the toy schedule samples with the toy sampler only; others with diffusers'."""
        samplers = _samplers_for(event.value)
        if samplers == self._samplers:
            return
        self._samplers = samplers
        for select_id, choices in (("#sampler", samplers), ("#compare", (NO_COMPARISON, *samplers))):
            select = self.query_one(select_id, Select)
            chosen = select.value
            select.set_options([(s, s) for s in choices])
            select.value = chosen if chosen in choices else _fitting(self.app.recipe.sample.sampler, choices)

    # ------------------------------------------------------------ actions

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "sample":
            self.action_sample()
        elif event.button.id == "sweep-button":
            self.action_sweep()

    def action_sweep(self) -> None:
        """Sample one row per value of the sweep field into one labelled grid, saved beside the run."""
        if self._busy():
            return
        try:
            job = self._job()
            sweep = self.query_one("#sweep", Input).value.strip()
            if not sweep:
                raise ValueError("sweep: give KEY=V1,V2,..., e.g. guidance_scale=0,1,3,7 or class=all")
        except ValueError as error:
            self.notify(str(error), title="sampling: cannot sweep", severity="error", timeout=10)
            return
        sweep_job = launch.sweep(job, sweep)
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#progress").display = True
        self._sampling_id = self.app.bridge.submit(sweep_job, self._on_swept).job_id

    def _on_swept(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.query_one("#progress", ProgressBar).update(total=event.total_steps, progress=event.step)
        elif isinstance(event, PreviewReady):
            self.query_one("#step-label", Static).update(f"[b]sweep[/b] saved to {event.path}")
            self.query("#headings, .sampler-row, #final-second").set(display=False)
            sweep = self.query_one("#final-first", Picture)
            sweep.split, sweep.title = False, f"sweep · {event.path}"  # a labelled figure: never cut into tiles
            sweep.image = event.image
            self.query("#final-title, #finals, #final-first").set(display=True)
            self.query_one("#final-title", Label).update("sweep: one row per value, the same noise in every row")
        elif isinstance(event, (JobFinished, JobError)):
            self._sampling_id = None
            self.query_one("#progress").display = False
            if isinstance(event, JobError):
                self.notify(event.message, title="sampling: cannot sweep", severity="error", timeout=10)

    def action_sample(self) -> None:
        if self._busy():
            return
        try:
            job = self._job()
        except ValueError as error:
            self.notify(str(error), title="sampling: cannot start", severity="error", timeout=10)
            return
        progress = self.query_one("#progress", ProgressBar)
        progress.update(total=job.steps * len(job.samplers), progress=0)
        progress.display = True
        self._sampling_id = self.app.bridge.submit(job, self._on_sampled).job_id

    def _busy(self) -> bool:
        """True (and says so) while a step-through, sweep or save still runs on the worker."""
        if self.sampling:
            self.notify("still sampling; wait for it to finish", severity="warning")
        return self.sampling

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The step keys move the step-through once there is one, from the step-through, the pane
        or nothing focused; a field or a list being edited keeps them."""
        if action in ("scrub", "scrub_to"):
            focused = self.focused
            return self.result is not None and (focused is None or isinstance(focused, StepView)
                                                or focused.has_class("output"))
        return True

    def action_scrub(self, delta: int) -> None:
        self.step = max(0, min(self.step + delta, self.step_count - 1))

    def action_scrub_to(self, index: int) -> None:
        self.step = index if index >= 0 else max(self.step_count - 1, 0)

    def action_full_screen(self) -> None:
        """Every picture shown here over the whole terminal, one at a time."""
        PictureViewer.show(self, "nothing to show yet: sample first (ctrl+r)")

    def action_save(self) -> None:
        if self.result is None:
            self.notify("nothing to save yet: sample first (ctrl+r)", severity="warning")
            return
        if self._busy():
            return
        self._sampling_id = self.app.bridge.submit(SaveStepThroughJob(self.result), self._on_saved).job_id

    # ------------------------------------------------------------ the job

    def _job(self) -> StepThroughJob:
        source = self.query_one("#source", Input).value.strip()
        if not source:
            raise ValueError("source: give a run directory or a diffusers pipeline folder")
        samplers = [self.query_one("#sampler", Select).value]
        if (other := self.query_one("#compare", Select).value) not in (NO_COMPARISON, samplers[0]):
            samplers.append(other)
        return StepThroughJob.from_path(
            source, samplers=samplers, steps=self._read("steps"), seed=self._read("seed"),
            num_images=self._read("images"), eta=self._read("eta"), device="auto",
            extra_overrides=self._guidance_overrides())

    def _guidance_overrides(self) -> list[str]:
        """Class, classifier-free and loss guidance as recipe settings; the engine validates them
        against the source's recipe (a class for an unconditional model is refused there)."""
        overrides = []
        labelled = bool(self.query_one("#class", Input).value.strip())
        if labelled:
            overrides.append(f"sample.class_labels=[{self._read('class')}]")
        cfg = self._read("cfg")
        if labelled or cfg != 1:
            overrides.append(f"sample.guidance_scale={cfg}")
        function = self.query_one("#guidance", Select).value
        overrides.append(f"guidance.function='{function}'")
        if function != "none":
            overrides.append(f"guidance.scale={self._read('strength')}")
        return overrides

    def _read(self, name: str):
        """The number in field `name`, or a ValueError that says what is wrong with it."""
        return _number_value(name, self.query_one(f"#{name}", Input).value)

    @on(Input.Changed, ".number Input")
    def _check_number(self, event: Input.Changed) -> None:
        """A bad number is said under its field as it is typed, as the recipe fields do."""
        name = event.input.id
        message = ""
        if name != "class" or event.value.strip():  # no class: an unconditional sample
            try:
                _number_value(name, event.value)
            except ValueError as error:
                message = str(error)
        error_label = self.query_one(f"#{name}-error", Label)
        error_label.update(message)
        error_label.display = bool(message)

    def _on_sampled(self, event: Event) -> None:
        if isinstance(event, LogLine) and event.text.startswith("using "):  # a stopped run's checkpoint
            self.notify(event.text, title="sampling", timeout=8)
            return
        if isinstance(event, Progress):
            self.query_one("#progress", ProgressBar).update(total=event.total_steps, progress=event.step)
            return
        if not isinstance(event, (JobFinished, JobError)):
            return
        self._sampling_id = None
        self.query_one("#progress").display = False
        if isinstance(event, JobError):
            self.notify(event.message, title="sampling: cannot sample", severity="error", timeout=10)
        elif event.status == "finished":
            self.result = event.summary
            self._show_finals()
            self._show_headings()
            self.query_one(StepView).focus()  # the arrow keys scrub from here on
            self.set_reactive(SamplingScreen.step, 0)
            self.watch_step(0)  # set_reactive does not call the watcher; a new result must show even at step 0

    def _on_saved(self, event: Event) -> None:
        if isinstance(event, JobError):
            self._sampling_id = None
            self.notify(event.message, title="sampling: cannot save", severity="error", timeout=10)
        elif isinstance(event, JobFinished):
            self._sampling_id = None
            self.notify("\n".join(event.summary["paths"]), title="saved")

    # ------------------------------------------------------------ showing it

    @property
    def step_count(self) -> int:
        if self.result is None:
            return 0
        return max(len(steps.inputs) for steps in self.result["samplers"].values())

    def watch_step(self, step: int) -> None:
        if self.result is None:
            return
        self.query_one("#step-label", Static).update(
            f"[b]step {step + 1} / {self.step_count}[/b] · ← → to step, home/end")
        samplers = list(self.result["samplers"].items())
        for row, found in zip(("first", "second"), samplers + [None]):
            box = self.query_one(f"#row-{row}")
            box.display = found is not None
            if found is None:
                continue
            name, steps = found
            shown = min(step, len(steps.inputs) - 1)  # Heun makes more model calls than DDIM
            calls = f" (call {shown + 1} of {len(steps.inputs)})" if len(steps.inputs) != self.step_count else ""
            norms = steps.trajectory.guidance_norms
            nudge = f" · guidance moved x by {norms[shown]:.3g}" if shown < len(norms) and norms[shown] else ""
            box.query_one(".sampler-name", Label).update(f"{name}{calls}{nudge}")
            x_t, x0 = HEADINGS[self.latent]
            for selector, images, what in ((".latent", _latents(steps), self._latent_heading()),
                                           (".x-t", steps.inputs, x_t), (".x0", steps.predictions, x0)):
                picture = box.query_one(selector, Picture)
                picture.title = f"{what} · {name} · step {step + 1} / {self.step_count}"
                picture.image = images[shown] if images else None

    @property
    def latent(self) -> bool:
        """True when the result is a latent model's: its steps have latent pictures beside the decoded."""
        return self.result is not None and any(_latents(steps) for steps in self.result["samplers"].values())

    def _latent_heading(self) -> str:
        """The latent column's heading, with how many grey pictures each image's block holds."""
        channels = max((getattr(s, "latent_channels", 0) for s in self.result["samplers"].values()), default=0)
        return f"{LATENT_HEADING} ({channels} channels)" if channels else LATENT_HEADING

    def _show_headings(self) -> None:
        """The column headings, and the latent column shown only for a latent model's steps."""
        latent = self.latent
        self.query_one("#headings .latent", Label).update(self._latent_heading())
        self.query(".latent").set(display=latent)
        x_t, x0 = HEADINGS[latent]
        self.query_one("#heading-x-t", Label).update(x_t)
        self.query_one("#heading-x0", Label).update(x0)
        self.query_one("#headings").display = True

    def _show_finals(self) -> None:
        finals = list(self.result["samplers"].items())
        for slot, found in zip(("first", "second"), finals + [None]):
            widget = self.query_one(f"#final-{slot}", Picture)
            widget.display = found is not None
            widget.split = True
            widget.title = f"final images · {found[0]}" if found else ""
            widget.image = found[1].final if found else None
        self.query("#final-title, #finals").set(display=True)
        names = " | ".join(self.result["samplers"])
        self.query_one("#final-title", Label).update(f"final images: {names}")


def _latents(steps) -> list | None:
    """A sampler's latent pictures per step; None for a pixel-space model (or a result without them)."""
    return getattr(steps, "latents", None)


def _number(name: str, value, label: str = "", placeholder: str = "") -> ComposeResult:
    with Vertical(classes="number"):
        yield Label(label or name, classes="field-label")
        yield Input(str(value), id=name, select_on_focus=False, placeholder=placeholder)
        error = Label("", id=f"{name}-error", classes="field-error", markup=False)
        error.display = False
        yield error


def _number_value(name: str, text: str):
    """Field `name`'s text as its number, or a ValueError saying what is wrong with it."""
    kind, low, high = NUMBERS[name]
    text = text.strip()
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} = {text!r}: expected a {'whole number' if kind is int else 'number'}") from None
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} = {text}: must be {bounds}")
    return value


def _samplers_for(source: str) -> tuple[str, ...]:
    return samplers_for(source) if source.strip() else SAMPLERS


def _fitting(wanted: str, choices: tuple[str, ...]) -> str:
    """`wanted` if it is offered, else DDIM (the course's usual sampler), else the first choice."""
    return next(s for s in (wanted, "ddim", choices[0]) if s in choices)


def newest_run(root: Path = Path("runs")) -> Path | None:
    """The most recently changed folder under ./runs/, the likely thing to sample."""
    if not root.is_dir():
        return None
    folders = [p for p in root.iterdir() if p.is_dir()]
    return max(folders, key=lambda p: p.stat().st_mtime, default=None)
