"""The lab at the smallest size it supports, 80×24: nothing cut on any screen; below it, a
clear notice instead of a broken layout. Driven with Pilot."""

from __future__ import annotations

import pytest
from textual.widget import Widget
from textual.widgets import Button, Label, RichLog, Static
from textual.widgets._toast import ToastRack

from difflab.screens.app import DifflabApp
from difflab.screens.dialogs import TooSmallScreen
from tests.conftest import wait_for_probe

pytestmark = pytest.mark.anyio

SCREEN_KEYS = {"1": "dataset", "2": "schedule", "3": "model", "4": "training", "5": "sampling",
               "6": "audio", "7": "inversion"}


def cut_widgets(screen) -> list[str]:
    """Every label, button, text block or log on `screen` whose text does not all show: cut at
    its own edge, at its container's edge, or with lines hidden inside it. Text below the fold
    of a pane that scrolls is not cut (PageDown reaches it)."""
    problems = []
    for widget in screen.query("Label, Button, Static, RichLog").results(Widget):
        if not widget.display or not widget.size.area or any(isinstance(a, ToastRack) for a in widget.ancestors):
            continue
        name = f"{type(widget).__name__}#{widget.id or '?'} {str(widget.render())[:40]!r}"
        geometry = screen.find_widget(widget)
        region, clip = geometry.region, geometry.clip
        if region.x < clip.x or region.right > clip.right:
            problems.append(f"{name}: columns {region.x}..{region.right} past its container's {clip.x}..{clip.right}")
        elif (region.y < clip.y or region.bottom > clip.bottom) and not _scrolls(widget):
            problems.append(f"{name}: rows {region.y}..{region.bottom} past its container's {clip.y}..{clip.bottom}")
        if isinstance(widget, RichLog):
            if widget.max_scroll_x > 0:
                problems.append(f"{name}: lines wider than the log ({widget.virtual_size.width} > {widget.size.width})")
            continue
        problems += _cut_inside(widget, name)
    return problems


def _scrolls(widget: Widget) -> bool:
    """Whether a pane around `widget` can scroll it into view."""
    return any(ancestor.max_scroll_y > 0 for ancestor in widget.ancestors if isinstance(ancestor, Widget))


def _cut_inside(widget: Widget, name: str) -> list[str]:
    """Text wider (unwrapped) or taller (wrapped) than the widget's own content area."""
    if not isinstance(widget, (Label, Button, Static)):
        return []
    content = widget.content_region.size
    container, viewport = widget.parent.size, widget.screen.size
    if widget.styles.text_wrap == "nowrap" or isinstance(widget, Button):
        needed = widget.get_content_width(container, viewport)
        return [f"{name}: {needed} columns in {content.width}"] if needed > content.width else []
    needed = widget.get_content_height(container, viewport, content.width)
    return [f"{name}: {needed} rows in {content.height}"] if needed > content.height else []


@pytest.mark.parametrize("key", list(SCREEN_KEYS))
async def test_nothing_is_cut_at_80_by_24(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ of this checkout: every screen in its first-visit state
    app = DifflabApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(key)
        assert app.current_mode == SCREEN_KEYS[key]
        await wait_for_probe(pilot)
        await pilot.pause(0.2)
        assert cut_widgets(app.screen) == []


async def test_below_80_by_24_a_notice_replaces_the_lab_until_the_terminal_grows():
    app = DifflabApp()
    async with app.run_test(size=(70, 20)) as pilot:
        await pilot.pause(0.1)
        assert isinstance(app.screen, TooSmallScreen)
        notice = str(app.screen.query_one("#too-small", Label).render())
        assert "make the terminal at least 80×24" in notice and "70×20" in notice
        await pilot.press("2")  # keys do not change what the notice hides
        assert app.current_mode == "dataset"
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.1)
        assert not isinstance(app.screen, TooSmallScreen) and app.screen.query_one("#tab-dataset")
        await pilot.resize_terminal(100, 23)  # one row short is too small as well
        await pilot.pause(0.1)
        assert isinstance(app.screen, TooSmallScreen)
        await pilot.resize_terminal(100, 32)
        await pilot.pause(0.1)
        assert not isinstance(app.screen, TooSmallScreen)
        await pilot.press("2")
        assert app.current_mode == "schedule"


async def test_in_16_colours_field_borders_do_not_fall_to_the_background():
    """TERM=screen: the theme's dark grey border became the black of the background."""
    from rich.color import ColorSystem
    from textual.widgets import Input

    def ansi_number(colour) -> int:
        return colour.rich_color.downgrade(ColorSystem.STANDARD).number

    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        app.add_class("-few-colours")  # what on_mount does on a 16-colour terminal (headless draws truecolor)
        await pilot.pause(0.1)
        for box in app.screen.query(Input):
            _, background = box.background_colors
            assert ansi_number(box.styles.border_top[1]) != ansi_number(background), box


async def test_visiting_the_other_screens_leaves_this_ones_layout_as_it_was():
    """A screen's .tcss applies to every screen once shown: the training screen's narrower form
    narrowed the dataset and audio screens' left panel from 37 to 31 columns."""
    from textual.widgets import Input

    def layout(app) -> list:
        form = app.screen.query_one(".form")
        return [form.size] + [(box.size, box.styles.border_top) for box in app.screen.query(Input)]

    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        before = {}
        for key in "16":
            await pilot.press(key)
            await pilot.pause(0.2)
            before[key] = layout(app)
        for key in "2345716":
            await pilot.press(key)
            await pilot.pause(0.2)
            if key in before:
                assert layout(app) == before[key], key
