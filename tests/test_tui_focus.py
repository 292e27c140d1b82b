"""One focus model: a field being edited takes the keys typed; Escape leaves it; then the
screen keys (1–7), the action keys (p, x, c, …) and PageDown/PageUp work. Driven with Pilot."""

from __future__ import annotations

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Button, DataTable, Input, Select, Switch, Tabs

from difflab.screens.app import DifflabApp
from difflab.screens.dialogs import HELP, HelpScreen
from difflab.screens.sampling import StepView
from tests.conftest import wait_for_probe

pytestmark = pytest.mark.anyio

# What Tab may stop at besides the right-hand pane: things that show their focus and take keys
# (StepView: the sampling screen's step-through, which takes ← →).
CONTROLS = (Input, Select, Switch, Button, DataTable, Tabs, StepView)


def field_input(app, key: str) -> Input:
    return app.screen.query_one(f"#field-{key.replace('.', '-')} Input", Input)


async def test_escape_leaves_a_field_then_p_pauses_and_7_switches_screen():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("4")
        paused = []
        app.screen.action_pause_resume = lambda: paused.append(True)  # no job needed to see the key arrive
        epochs = field_input(app, "train.epochs")
        epochs.focus()
        epochs.value = ""
        await pilot.press("2", "0")
        assert epochs.value == "20" and app.recipe.train.epochs == 20
        await pilot.press("escape")
        assert app.focused is None  # the screen has the keys, not a field
        await pilot.press("p")
        assert paused == [True] and epochs.value == "20"  # not "20p"
        await pilot.press("7")
        assert app.current_mode == "inversion"


async def test_a_digit_typed_into_a_field_stays_there_until_escape():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("6")
        hop = field_input(app, "audio.hop_length")
        hop.focus()
        hop.value = "256"
        hop.cursor_position = 3
        await pilot.press("7")  # editing: the digit is part of the number
        assert hop.value == "2567" and app.current_mode == "audio"
        hop.value = "256"
        await pilot.press("escape", "7")
        assert app.current_mode == "inversion"


async def test_a_screen_opens_with_no_field_being_edited():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        for key in "123567":
            await pilot.press(key)
            assert app.focused is None or not isinstance(app.focused, (Input, Select)), (key, app.focused)


async def test_pagedown_scrolls_the_right_hand_pane_wherever_the_focus_is():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        output = app.screen.query_one(".output", VerticalScroll)
        assert output.max_scroll_y > 0  # "images per class" is below the fold at 100×32
        await pilot.press("pagedown")
        await pilot.pause(0.5)
        assert output.scroll_y > 0
        await pilot.press("pageup")
        await pilot.pause(0.5)
        assert output.scroll_y == 0
        field_input(app, "dataset.image_size").focus()  # from inside a field too: Input has no PageDown
        await pilot.press("pagedown")
        await pilot.pause(0.5)
        assert output.scroll_y > 0


@pytest.mark.parametrize("key", list("1234567"))
async def test_tab_reaches_every_control_and_the_output_pane_never_a_bare_container(key):
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press(key)
        await pilot.pause(0.2)
        focusable = list(app.screen.focus_chain)
        reached = []
        for _ in focusable:
            await pilot.press("tab")
            reached.append(app.focused)
        assert set(reached) == set(focusable)
        for widget in reached:
            pane = isinstance(widget, VerticalScroll) and widget.has_class("output")
            assert pane or isinstance(widget, CONTROLS), widget
        assert any(isinstance(w, VerticalScroll) and w.has_class("output") for w in reached)


async def test_the_help_says_how_focus_works_in_two_lines():
    assert "`Escape` leaves it" in HELP and "`PageDown` / `PageUp`" in HELP
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
