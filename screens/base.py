"""What every lab screen shares: the screen bar, a form of recipe fields, an output area,
the status line, and one probe job on the worker that reruns when the recipe changes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from difflab.runtime.events import Event, JobError, JobFinished

from .widgets import ProbeSpinner, RecipeField, ScreenBar, StatusLine

PROBE_DELAY_S = 0.3  # typing "128" should start one probe, not three


class LabScreen(Screen):
    """A screen = recipe fields on the left, what the engine computed from them on the right."""

    COMPACT_FOOTER = False  # a screen with many keys packs them closer so none is cut at 80 columns

    SCREEN_NAME = ""
    # Opened with nothing focused (None would mean the app's "*"), so the screen and action
    # keys work at once; Tab enters the fields, Escape (an app key) leaves them.
    AUTO_FOCUS = ""
    # priority: the form around a focused field would otherwise take them and scroll itself
    BINDINGS = [
        Binding("pagedown", "page_output(1)", "Page down", id="output.page_down", show=False, priority=True,
                tooltip="scroll the right-hand pane down a page"),
        Binding("pageup", "page_output(-1)", "Page up", id="output.page_up", show=False, priority=True,
                tooltip="scroll the right-hand pane up a page"),
    ]

    def fields(self) -> list[RecipeField]:
        """The recipe fields this screen edits."""
        return []

    def compose_output(self) -> ComposeResult:
        """The widgets that show the probe's result."""
        yield from ()

    def make_probe(self):
        """The job that computes what this screen shows, or None."""
        return

    def show_result(self, summary: dict) -> None:
        """Put a finished probe's result on screen."""

    # ------------------------------------------------------------ shared machinery

    def compose(self) -> ComposeResult:
        yield ScreenBar(self.SCREEN_NAME)
        with Horizontal(classes="work"):
            # The form is not a Tab stop of its own (a focused container shows nothing): its
            # fields are, and focusing one scrolls it into view. The output pane is one.
            with VerticalScroll(classes="form", can_focus=False):
                yield from self.fields()
            with VerticalScroll(classes="output"):
                yield ProbeSpinner(id="probe-loading")
                yield from self.compose_output()
        yield StatusLine()
        yield Footer(compact=self.COMPACT_FOOTER)

    def on_mount(self) -> None:
        self._job_id: int | None = None
        self._timer = None
        self._pending = False
        self._opened_seen = self.app.recipes_opened
        self.watch(self.app, "recipe", self._recipe_changed, init=False)
        self._pending = True
        self.call_after_refresh(self.rerun_probe)  # paint first; the probe may import torch

    def action_page_output(self, pages: int) -> None:
        """PageDown/PageUp scroll the right-hand pane, wherever the focus is on this screen."""
        output = self.query_one(".output", VerticalScroll)
        if pages > 0:
            output.scroll_page_down()
        else:
            output.scroll_page_up()

    def on_screen_resume(self) -> None:
        if getattr(self, "_stale", False):  # the recipe changed while another screen was shown
            self._stale = False
            self._recipe_changed(self.app.recipe)

    def _recipe_changed(self, _recipe) -> None:
        if not self.is_current:
            self._stale = True
            return
        # A field being edited keeps what is typed, unless another recipe was opened meanwhile
        # (typed text left in a field would show a value the new recipe does not have).
        opened = self._opened_seen != self.app.recipes_opened
        self._opened_seen = self.app.recipes_opened
        for field in self.query(RecipeField):
            if opened or not field.has_focus_within:
                field.refresh_value()
        if self._timer is not None:
            self._timer.stop()
        self._pending = True
        self._timer = self.set_timer(PROBE_DELAY_S, self.rerun_probe)

    def rerun_probe(self) -> None:
        """Forget any running probe's result and start a fresh one."""
        self._pending = False
        probe = self.make_probe()
        if probe is None:
            return
        if self._job_id is not None:
            self.app.bridge.forget(self._job_id)
        self.query_one("#probe-loading").display = True
        self._job_id = self.app.bridge.submit_probe(probe, self._on_event).job_id

    @property
    def probing(self) -> bool:
        """True while a probe is scheduled or running (tests wait on this)."""
        return self._pending or self._job_id is not None

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobFinished):
            self._job_id = None
            self.query_one("#probe-loading").display = False
            self.show_result(event.summary)
        elif isinstance(event, JobError):
            self._job_id = None
            self.query_one("#probe-loading").display = False
            self.show_error(event.message)

    def show_error(self, message: str) -> None:
        self.notify(message, title=f"{self.SCREEN_NAME}: cannot compute", severity="error", timeout=10)
