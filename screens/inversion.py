"""Inversion screen: an image back to the noise that makes it, forward again, and an edit.

The original, the inverted noise, the reconstruction and the edit as four labelled
rows (one column per image), with the error table: MSE and PSNR of the reconstruction,
sampling from random noise instead for scale, and the step and guidance sweeps. The
fields are the recipe's [invert] section; the work runs on the worker as an
InversionLaunch (InvertJob), which writes the same files as `difflab invert`.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static

from difflab.jobs import launch
from difflab.recipe import GUIDANCE_FUNCTIONS
from difflab.runtime.catalog import is_builtin
from difflab.runtime.events import Event, JobError, JobFinished, JobStarted, LogLine, Progress

from .base import LabScreen
from .sampling import newest_run
from .widgets import RecipeField, TerminalImage

# The grids InversionLaunch returns, in the order of the figure, with their row labels.
ROWS = [("originals", "original"), ("inverted-noise", "inverted noise (shown ±3σ)"),
        ("reconstructions", "reconstruction (inverted noise sampled forward)"), ("edits", "edit")]


class InversionScreen(LabScreen):
    """[invert]: invert images with a run's model, reconstruct them, edit them; the error table."""

    SCREEN_NAME = "inversion"
    CSS_PATH = "inversion.tcss"
    BINDINGS = [Binding("ctrl+r", "invert", "Invert", id="inversion.run",
                        tooltip="invert, reconstruct and edit with these settings")]

    def fields(self):
        yield RecipeField("invert.source", "source folder (empty: newest run)")
        yield RecipeField("invert.images", "images (dataset indices)")
        yield RecipeField("invert.image_paths", "and image files (PNG/JPEG)")
        with Horizontal(classes="numbers"):
            yield RecipeField("invert.steps", "steps")
            yield RecipeField("invert.guidance_scale", "CFG scale")
        yield Label("edit: back start_step steps, then forward with…", classes="form-title")
        with Horizontal(classes="numbers"):
            yield RecipeField("invert.start_step", "start step")
            yield RecipeField("invert.edit_class", "class")
        with Horizontal(classes="numbers"):
            yield RecipeField("invert.edit_guidance_scale", "CFG scale")
            yield RecipeField("invert.edit_loss_guidance", "loss guidance")
        with Horizontal(classes="numbers"):
            yield RecipeField("guidance.function", "guide with", choices=list(GUIDANCE_FUNCTIONS))
            yield RecipeField("guidance.scale", "its scale")
        yield Label("sweeps: a row of the error table each", classes="form-title")
        with Horizontal(classes="numbers"):
            yield RecipeField("invert.sweep_steps", "steps, [10, 20]")
            yield RecipeField("invert.sweep_guidance", "CFG, [1, 3]")
        yield Button("Invert", id="invert", variant="primary", tooltip="ctrl+r")

    def compose_output(self) -> ComposeResult:
        yield ProgressBar(id="progress", show_eta=False)
        yield Static("Give a run or pipeline folder and press ctrl+r: each image is walked back to the noise "
                     "that makes it (DDIM run backwards), sampled forward again, and edited.", id="inversion-title")
        for grid, label in ROWS:
            with Vertical(id=f"row-{grid}", classes="grid-row"):
                yield Label(label, classes="grid-label")
                yield TerminalImage(classes="grid")
        yield Label("reconstruction error (pixels in 0..1)", id="errors-title", classes="section-title")
        yield DataTable(id="errors", cursor_type="row", zebra_stripes=True)
        yield Static(id="folder", markup=False)

    def on_mount(self) -> None:
        # LabScreen.on_mount also runs (Textual dispatches on_mount along the MRO)
        self._inversion_id: int | None = None
        self.query("#probe-loading, #progress, .grid-row, #errors-title, #errors").set(display=False)
        self._show_newest_run()

    def on_screen_resume(self) -> None:
        self._show_newest_run()  # a run may have been trained on screen 4 meanwhile

    def _show_newest_run(self) -> None:
        """What an empty source stands for, as the source field's placeholder."""
        self.query_one("#field-invert-source Input", Input).placeholder = str(newest_run() or "runs/ has no run yet")

    @property
    def inverting(self) -> bool:
        """True while the inversion runs on the worker (tests wait on this)."""
        return self._inversion_id is not None

    # ------------------------------------------------------------ the job

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "invert":
            self.action_invert()

    def action_invert(self) -> None:
        if self.inverting:
            self.notify("still inverting; wait for it to finish", severity="warning")
            return
        try:
            source = self._source()
        except ValueError as error:
            self.notify(str(error), title="inversion: cannot start", severity="error", timeout=10)
            return
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#progress").display = True
        job = launch.inversion(self.app.recipe, source, self._recipe_base())
        self._inversion_id = self.app.bridge.submit(job, self._on_event_of_inversion).job_id

    def _recipe_base(self) -> Path:
        """Where the recipe's relative paths start: its folder, or here for a built-in or unsaved one
        (a built-in's folder is inside the installed package, where no run lives)."""
        path = self.app.recipe_path
        return Path.cwd() if path is None or is_builtin(path) else path.parent

    def _source(self) -> Path:
        text = self.app.recipe.invert.source
        if not text:
            newest = newest_run()
            if newest is None:
                raise ValueError("invert.source: no run under runs/ yet; train one (ctrl+r on screen 4, or "
                                 "`difflab run`) or give a run or pipeline folder")
            return newest
        path = Path(text).expanduser()
        return path if path.is_absolute() else self._recipe_base() / path

    def _on_event_of_inversion(self, event: Event) -> None:
        progress = self.query_one("#progress", ProgressBar)
        if isinstance(event, LogLine) and event.text.startswith("using "):  # a stopped run's checkpoint
            self.notify(event.text, title="inversion", timeout=8)
        elif isinstance(event, JobStarted):
            progress.update(total=event.total_steps, progress=0)
        elif isinstance(event, Progress):
            progress.update(total=event.total_steps, progress=event.step)
        elif isinstance(event, (JobFinished, JobError)):
            self._inversion_id = None
            progress.display = False
            if isinstance(event, JobError):
                self.notify(event.message, title="inversion: cannot invert", severity="error", timeout=10)
            elif event.status == "finished":
                self._show(event.summary)

    # ------------------------------------------------------------ showing it

    def _show(self, summary: dict) -> None:
        table = summary["invert"]
        for grid, _label in ROWS:
            row = self.query_one(f"#row-{grid}")
            row.query_one(TerminalImage).image = summary["grids"][grid]
            row.display = True
        self.query_one("#row-edits .grid-label", Label).update(f"edit ({_describe_edit(table)})")
        self.query_one("#inversion-title", Static).update(
            f"[b]DDIM inversion[/b] of {table['images']} images, {table['steps']} steps: "
            f"MSE [b]{table['mse']:.5f}[/b], PSNR [b]{table['psnr']:.1f} dB[/b] "
            f"(from random noise instead: MSE {table['random_noise_mse']:.5f})")
        self._fill_table(summary["table_rows"])
        self.query_one("#folder", Static).update(f"written to {table['folder']}/ (inversion.png, errors.json)")

    def _fill_table(self, rows: list[tuple[str, ...]]) -> None:
        errors = self.query_one("#errors", DataTable)
        errors.clear(columns=True)
        errors.add_columns("setting", "steps", "CFG", "MSE", "PSNR (dB)")
        errors.add_rows(rows)
        self.query("#errors-title, #errors").set(display=True)


def _describe_edit(table: dict) -> str:
    """What the edit changed, from errors.json's `edit` entry."""
    edit = table["edit"]
    parts = [f"back {edit['start_step']} of {table['steps']} steps"]
    if edit["class_label"] is not None:
        parts.append(f"class {edit['class_label']}")
    if edit["guidance_scale"] is not None:
        parts.append(f"CFG {edit['guidance_scale']:g}")
    if edit["loss_guidance"]:
        parts.append("loss guidance")
    if len(parts) == 1:
        parts.append("nothing changed: a partial reconstruction")
    return ", ".join(parts)
