"""Shared widgets: terminal images are turned into cells off the UI thread; a live plot is drawn
in one frame; a hidden spinner stops its timer."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image
from textual.app import App
from textual_hires_canvas import Canvas
from textual_image.renderable.halfcell import Image as HalfcellRenderable
from textual_plot import HiResMode

from difflab.screens.widgets import HalfcellPreview, LivePlot, ProbeSpinner, margin_plot
from tests.conftest import wait_for_images

pytestmark = pytest.mark.anyio


class OneImage(App):
    def compose(self):
        yield HalfcellPreview(id="picture")


async def test_a_preview_is_turned_into_cells_on_a_thread_and_then_shown(monkeypatch):
    threads: list[threading.Thread] = []
    draw = HalfcellRenderable.__rich_console__

    def spy(self, console, options):
        threads.append(threading.current_thread())
        yield from draw(self, console, options)

    monkeypatch.setattr(HalfcellRenderable, "__rich_console__", spy)
    app = OneImage()
    async with app.run_test(size=(40, 20)) as pilot:
        picture = app.query_one(HalfcellPreview)
        picture.image = Image.new("RGB", (16, 16), (255, 0, 0))
        await wait_for_images(pilot, time.monotonic() + 30)
        assert threads and threading.main_thread() not in threads
        first_row = picture.render_line(0)
        assert "▀" in first_row.text
        assert any(s.style and s.style.color and s.style.color.triplet == (255, 0, 0) for s in first_row)

        picture.image = Image.new("RGB", (16, 16), (0, 0, 255))  # a new preview replaces the cells
        await wait_for_images(pilot, time.monotonic() + 30)
        assert any(s.style and s.style.color and s.style.color.triplet == (0, 0, 255)
                   for s in picture.render_line(0))


class OnePlot(App):
    def __init__(self, draw_at_mount: bool = False) -> None:
        super().__init__()
        self.draw_at_mount = draw_at_mount

    def compose(self):
        yield margin_plot("plot", bottom=2, left=7)

    def on_mount(self) -> None:
        if self.draw_at_mount:  # before the first layout: the canvases have no size yet
            draw_a_peak(self.query_one(LivePlot))


def draw_a_peak(plot: LivePlot) -> None:
    with plot.redraw():
        plot.clear()
        plot.plot([0, 1, 2], [0.0, 1.0, 0.0], hires_mode=HiResMode.BRAILLE)
        plot.set_xlimits(0, 2)
        plot.set_ylimits(0, 1)


def braille_rows(plot: LivePlot) -> int:
    canvas = plot.query_one("#plot", Canvas)
    return sum(any("\u2800" < c <= "\u28ff" for c in canvas.render_line(y).text) for y in range(canvas.size.height))


async def test_a_live_plot_update_lands_on_its_canvases_at_once_without_repainting_the_widget(monkeypatch):
    app = OnePlot()
    async with app.run_test(size=(40, 12)) as pilot:
        plot = app.query_one(LivePlot)
        await pilot.pause()
        repaints = []
        monkeypatch.setattr(plot, "refresh", lambda *a, **k: repaints.append(k))
        draw_a_peak(plot)
        assert braille_rows(plot) >= 3 and not repaints  # drawn in the block, no frame of the widget itself


async def test_a_live_plot_drawn_before_its_first_layout_shows_once_laid_out():
    app = OnePlot(draw_at_mount=True)
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        assert braille_rows(app.query_one(LivePlot)) >= 3


class OneSpinner(App):
    def compose(self):
        yield ProbeSpinner()


async def test_a_hidden_spinner_stops_its_timer_and_animates_again_when_shown():
    app = OneSpinner()
    async with app.run_test(size=(20, 5)) as pilot:
        spinner = app.query_one(ProbeSpinner)
        assert spinner.auto_refresh
        spinner.display = False
        for _ in range(50):  # the next tick of its timer notices
            if spinner.auto_refresh is None:
                break
            await pilot.pause(0.05)
        assert spinner.auto_refresh is None
        spinner.display = True
        assert spinner.auto_refresh == 1 / 16


def test_the_status_line_says_how_pictures_are_drawn_and_why_colours_are_few(monkeypatch):
    from difflab.screens.widgets import IMAGE_MODE, display_mode

    assert display_mode("truecolor") == f"images: {IMAGE_MODE}, truecolor"
    monkeypatch.setenv("TERM", "screen")
    monkeypatch.delenv("COLORTERM", raising=False)
    degraded = display_mode("standard")  # what Rich picks for TERM=screen
    assert "16 colours" in degraded and "TERM=screen" in degraded and "COLORTERM=truecolor" in degraded


def test_the_status_line_shows_recipe_paths_short(tmp_path, monkeypatch):
    from difflab.runtime.catalog import find_recipe
    from difflab.screens.widgets import shown_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "elsewhere").mkdir()
    assert shown_path(find_recipe("from-scratch")) == "from-scratch.toml (built-in)"
    assert shown_path(tmp_path / "mine" / "a.toml") == "mine/a.toml"
    monkeypatch.setenv("HOME", str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert shown_path(tmp_path / "mine" / "a.toml") == "~/a.toml"
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert shown_path(tmp_path / "mine" / "a.toml") == "…/mine/a.toml"


async def test_the_loss_axis_widens_for_its_longest_label():
    app = OnePlot()
    async with app.run_test(size=(40, 12)) as pilot:
        plot = app.query_one(LivePlot)
        await pilot.pause()
        plot.set_ylimits_with_room(0.0001, 0.0003)  # labels like "0.00015": 7 characters
        await pilot.pause()
        margin = plot.query_one("#margin-left", Canvas)
        labels = [margin.render_line(y).text.strip() for y in range(margin.size.height)]
        assert "0.00015" in labels and "0.00020" in labels, labels
