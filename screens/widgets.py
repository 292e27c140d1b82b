"""Widgets every screen shares: terminal images, the screen bar, the status line, recipe fields."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from importlib.resources import files
from typing import Any

from rich.console import Console
from rich.segment import Segments
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import (
    Input,
    Label,
    LoadingIndicator,
    Select,
    Static,
    Switch,
    Tab,
    Tabs,
)
from textual_hires_canvas import Canvas
from textual_image._terminal import get_cell_size  # cached at import by textual_image.widget, below
from textual_image.renderable.halfcell import Image as HalfcellRenderable
from textual_image.widget import HalfcellImage, SixelImage, TGPImage
from textual_plot import PlotWidget
from textual_plot.axis_formatter import NumericAxisFormatter

from difflab.recipe import parse_toml_value

SCREENS = [("dataset", "1 Dataset"), ("schedule", "2 Schedule"), ("model", "3 Model"),
           ("training", "4 Training"), ("sampling", "5 Sampling"), ("audio", "6 Audio"),
           ("inversion", "7 Invert")]


class HalfcellPreview(HalfcellImage, Renderable=HalfcellRenderable):
    """textual-image's half-cell widget, its cells computed on a thread, not in render().

    Turning a picture into coloured half cells is ~5-10 ms of Python per preview; in
    render() that would hold up key handling and frames while a job streams previews.
    Sizing is the parent's; render() only hands out cells made for this image at this
    size, and shows the previous cells while new ones are being made.
    """

    def __init__(self, *args, **kwargs) -> None:
        self._cells: tuple | None = None  # (image, width, height, segments)
        self._wanted: tuple | None = None  # (image, width, height) a thread is making cells for
        super().__init__(*args, **kwargs)

    @property
    def rendering(self) -> bool:
        """True while a thread is making cells that have not arrived yet (tests wait on it)."""
        return self._wanted is not None

    def _matches(self, made: tuple | None) -> bool:
        size = self.content_size
        return made is not None and made[0] is self.image and made[1:3] == (size.width, size.height)

    def render(self):
        if self.image is None or not self.content_size.area:
            return ""
        if not (self._matches(self._cells) or self._matches(self._wanted)):
            self._wanted = (self.image, *self.content_size)
            self.run_worker(partial(self._make_cells, *self._wanted, self._get_styled_size()),
                            thread=True, exclusive=True, group="cells", exit_on_error=False)
        return Segments(self._cells[3]) if self._cells is not None else ""

    def _make_cells(self, image, width: int, height: int, styled_size: tuple) -> None:
        """On a thread: the half cells of `image` at the widget's size, then a repaint."""
        try:
            console = Console(width=width, height=height, color_system="truecolor", file=io.StringIO())
            segments = list(console.render(self._Renderable(image, *styled_size),
                                           console.options.update(width=width, height=height)))
        except Exception:  # a picture that cannot be drawn shows nothing rather than "rendering" forever
            segments = []
        self.app.call_from_thread(self._cells_ready, (image, width, height, segments))

    def _cells_ready(self, cells: tuple) -> None:
        self._cells = cells
        if self._wanted is not None and self._wanted[0] is cells[0] and self._wanted[1:] == cells[1:3]:
            self._wanted = None
        self.refresh()


def _image_widget_class() -> tuple[type, str, str]:
    """Sixel or Kitty graphics where the terminal said it has them, else half-block cells;
    with the mode's name and, for half cells, why.

    textual-image asks the terminal once, at import, before Textual takes the screen;
    half cells work everywhere (tmux, SSH, tests) and render a 64-column preview in a
    few milliseconds. DIFFLAB_IMAGES=halfcell|sixel|kitty forces one.
    """
    # here, not at the top: importing textual-image queries the terminal, which tests and --help must not
    from textual_image.renderable import Image as detected
    from textual_image.renderable.sixel import Image as SixelRenderable
    from textual_image.renderable.tgp import Image as TGPRenderable

    forced = os.environ.get("DIFFLAB_IMAGES", "auto")
    if forced == "sixel" or (forced == "auto" and detected is SixelRenderable):
        return SixelImage, "sixel", ""
    if forced == "kitty" or (forced == "auto" and detected is TGPRenderable):
        return TGPImage, "kitty", ""
    if forced != "auto":
        why = f"DIFFLAB_IMAGES={forced}"
    elif not (sys.__stdout__ and sys.__stdout__.isatty()):
        why = "not a terminal"
    elif os.environ.get("TMUX") or os.environ.get("TERM", "").startswith(("screen", "tmux")):
        why = "tmux/screen pass no Sixel or Kitty graphics"
    else:
        why = "the terminal did not answer that it has Sixel or Kitty graphics"
    return HalfcellPreview, "halfcell", why


TerminalImage, IMAGE_MODE, IMAGE_MODE_WHY = _image_widget_class()
"""The one image widget every screen uses (fitted to its area, aspect ratio kept), its mode and
why it is half cells when it is."""

COLOURS = {"truecolor": "truecolor", "256": "256 colours", "standard": "16 colours", "windows": "16 colours"}


def cell_pixels() -> tuple[int, int]:
    """Terminal pixels in one cell: 1×2 for half cells, the terminal's own cell size for real pixels."""
    if IMAGE_MODE == "halfcell":
        return 1, 2
    size = get_cell_size()
    return size.width, size.height


def display_mode(color_system: str | None) -> str:
    """The image mode and colours for the status line, with what to change when colours are few.

    Rich picks its colours from TERM and COLORTERM: TERM=screen alone gives 16, and half-cell
    pictures drop to a few greys.
    """
    colours = COLOURS.get(color_system or "", "no colour")
    text = f"images: {IMAGE_MODE}, {colours}"
    if colours != "truecolor":
        term = os.environ.get("TERM", "") or "unset"
        text += f" (TERM={term}; COLORTERM=truecolor for full colour)"
    return text


def shown_path(path) -> str:
    """A recipe's path as short as it stays clear: built-ins by name, files under the working
    folder relative to it, under the home folder with ~, elsewhere its folder and name (at 80
    columns a full path took a row)."""
    from pathlib import Path

    path = Path(path).resolve()
    if path.parent == Path(files("difflab.recipes")).resolve():
        return f"{path.name} (built-in)"
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if path.is_relative_to(base.resolve()):
            return prefix + str(path.relative_to(base.resolve()))
    return str(Path("…", *path.parts[-2:])) if len(path.parts) > 3 else str(path)  # ctrl+o shows where


class ScreenBar(Tabs):
    """The visible screen switcher (keys 1–7 do the same)."""

    def __init__(self, current: str) -> None:
        super().__init__(*[Tab(label, id=f"tab-{name}") for name, label in SCREENS], active=f"tab-{current}")

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        name = event.tab.id.removeprefix("tab-")
        if self.app.current_mode != name:
            self.app.switch_mode(name)


class StatusLine(Static):
    """Device, current recipe file, unsaved changes, how pictures are drawn."""

    DEFAULT_CSS = """
    StatusLine { height: auto; max-height: 3; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def on_mount(self) -> None:
        if IMAGE_MODE_WHY:  # why half cells and not real pixels, for whoever hovers over it
            self.tooltip = f"images as half cells: {IMAGE_MODE_WHY}"
        for name in ("device_label", "recipe_path", "dirty"):
            self.watch(self.app, name, lambda _value: self.refresh_text(), init=False)
        self.refresh_text()

    def refresh_text(self) -> None:
        app = self.app
        path = shown_path(app.recipe_path) if app.recipe_path else "unsaved recipe"
        changed = " [b]●[/] modified" if app.dirty else ""
        images = display_mode(app.console.color_system)
        self.update(f"device: {app.device_label}   recipe: {path}{changed}   {images}", layout=True)


class ProbeSpinner(LoadingIndicator):
    """Textual's loading indicator, animated only while it is displayed.

    Textual's starts a 16 Hz timer at mount that runs for as long as the widget exists, hidden
    or not: the one on the dataset screen alone woke the UI thread ~45 times a second, 5-6 ms
    of its time a second, all taken from a training job (measured on the training screen).
    """

    @property
    def display(self) -> bool:
        return LoadingIndicator.display.fget(self)

    @display.setter
    def display(self, show: bool | str) -> None:
        LoadingIndicator.display.fset(self, show)
        if self.is_mounted and self.display and self.auto_refresh is None:
            self.auto_refresh = 1 / 16

    def automatic_refresh(self) -> None:
        if self.display:
            super().automatic_refresh()
        else:
            self.auto_refresh = None  # hidden: no timer until it is displayed again


class RecipeField(Vertical):
    """One recipe key: a label, an input (text, choice or switch) and its validation message."""

    DEFAULT_CSS = """
    RecipeField { height: auto; margin-bottom: 1; }
    RecipeField .field-label { color: $text-muted; width: 100%; }  /* long labels wrap, not cut */
    RecipeField .field-error { color: $error; height: auto; width: 100%; }
    RecipeField Input, RecipeField Select { width: 100%; }
    """

    error: reactive[str] = reactive("", layout=True)

    def __init__(self, key: str, label: str, choices: list[str] | None = None) -> None:
        super().__init__(id="field-" + key.replace(".", "-"))
        self.key, self.label_text, self.choices = key, label, choices

    def compose(self) -> ComposeResult:
        yield Label(self.label_text, classes="field-label")
        value = self.app.recipe_value(self.key)
        if self.choices is not None:
            yield Select([(c, c) for c in self.choices], value=str(value), allow_blank=False)
        elif isinstance(value, bool):
            yield Switch(value=value)
        else:
            yield Input(_as_text(value), select_on_focus=False)
        error = Label("", classes="field-error", markup=False)
        error.display = False
        yield error

    def watch_error(self, message: str) -> None:
        if self.is_mounted:
            label = self.query_one(".field-error", Label)
            label.update(message)
            label.display = bool(message)  # an empty message takes no row

    def refresh_value(self) -> None:
        """Show the recipe's current value (after a recipe was opened)."""
        value = self.app.recipe_value(self.key)
        # Without prevent, the Changed this posts is handled later and writes the value of that
        # moment back: two fields of one key (on two screens) then echoed 1, 16, 1, 16, ... for ever.
        with self.prevent(Input.Changed, Select.Changed, Switch.Changed):
            if self.choices is not None:
                self.query_one(Select).value = str(value)
            elif isinstance(value, bool):
                self.query_one(Switch).value = value
            else:
                self.query_one(Input).value = _as_text(value)
        self.error = ""

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._set(parse_toml_value(event.value.strip()) if event.value.strip() else "")

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.BLANK and event.value != str(self.app.recipe_value(self.key)):
            self._set(parse_toml_value(str(event.value)))

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._set(event.value)

    def _set(self, value: Any) -> None:
        self.error = self.app.set_recipe_value(self.key, value)


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value)


class LivePlot(PlotWidget):
    """A PlotWidget whose data can be replaced in one block and drawn straight onto its canvases.

    textual-plot draws lazily, in render(): each clear(), plot() or set_*limits() refreshes
    the whole widget, and the canvases it then draws on (one refresh per pixel) are repainted
    in a second frame. Measured while training, a loss-curve update cost two frames; through
    redraw() it costs one, in which only the three canvases repaint.
    """

    _holding = False
    _limits_with_room: tuple[float, float] | None = None

    def _rerender(self) -> None:
        if self._holding:
            self._needs_rerender = True
        else:
            super()._rerender()

    @contextmanager
    def redraw(self) -> Iterator[LivePlot]:
        """Change the plot inside the block; it is drawn once, when the block ends."""
        self._holding = True
        try:
            yield self
        finally:
            self._holding = False
        canvases = list(self.query(Canvas))
        # render() sizes the canvases (an empty margin keeps its old size): until they match
        # the layout, draw the usual way
        if self._needs_canvas_resize or any(c.size and c.size != c._canvas_size for c in canvases):
            self._rerender()
            return
        with ExitStack() as batch:
            for canvas in canvases:
                batch.enter_context(canvas.batch_refresh())
            self._render_plot()
        self._needs_rerender = False

    def on_resize(self) -> None:
        if self._limits_with_room is not None:  # the ticks that fit depend on the width
            self.set_xlimits_with_room(*self._limits_with_room)

    def set_xlimits_with_room(self, low: float, high: float) -> None:
        """set_xlimits, with only as many of textual-plot's ticks as have room for their labels.

        textual-plot puts ~6 labels on the x axis whatever its width: at 80 columns the loss
        plot is 17 cells wide and they ran together ("0.0 0.20.40.60.81.0").
        """
        self._limits_with_room = (low, high)
        self.set_xlimits(low, high)
        cells = self.size.width - self.margin_left
        formatter = NumericAxisFormatter()
        ticks = formatter.get_ticks(low, high)
        if cells <= 0 or len(ticks) < 2 or high <= low:
            self.set_xticks(None)
            return
        for every in range(1, len(ticks)):
            kept = ticks[::every]
            widest = max(len(label) for label in formatter.get_labels_for_ticks(kept))
            # widest + 2: label positions round to whole cells, and "14" and "16" 3.0 cells apart touched
            if len(kept) < 2 or cells * (kept[1] - kept[0]) / (high - low) >= widest + 2:
                break
        self.set_xticks(kept)

    def set_ylimits_with_room(self, low: float, high: float) -> None:
        """set_ylimits, with a left margin wide enough for every y label.

        textual-plot cuts y labels to the margin: a loss near 0.0001 has 7-character labels
        ("0.00015"), and a 7-column margin showed them cut short.
        """
        formatter = NumericAxisFormatter()
        labels = formatter.get_labels_for_ticks(formatter.get_ticks(low, high)) if high > low else []
        wanted = max((len(label) for label in labels), default=0) + 2  # the label, a space, the axis
        self.set_ylimits(low, high)
        if wanted > self.margin_left:
            self.margin_left = wanted
            # the margin's canvas takes its new width at the next layout: draw again after it
            # (textual-plot resizes its canvases on a layout refresh); labels drawn before are cut
            self.call_after_refresh(self.refresh, layout=True)


def margin_plot(plot_id: str, bottom: int, left: int) -> LivePlot:
    """A fixed plot with no top margin and room for `bottom` rows of x ticks, `left` columns of y ticks."""
    plot = LivePlot(id=plot_id, allow_pan_and_zoom=False)
    plot.can_focus = False  # fixed: nothing to pan or zoom, so no Tab stop
    # set_reactive: the margin watchers need the plot's children, which exist only once mounted
    plot.set_reactive(PlotWidget.margin_top, 0)
    plot.set_reactive(PlotWidget.margin_bottom, bottom)
    plot.set_reactive(PlotWidget.margin_left, left)
    return plot

