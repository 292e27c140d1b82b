"""The inversion screen, used as a person would: pick a run, invert it, read the images and the error table."""

from __future__ import annotations

import json
import time

import pytest
from textual.widgets import DataTable, Input, Label, ProgressBar, Static

from difflab.recipe import parse_toml_value
from difflab.screens.app import DifflabApp
from difflab.screens.inversion import InversionScreen
from difflab.screens.widgets import RecipeField, TerminalImage
from tests.conftest import TINY_DDPM, run_cli, tiny_args, wait_for_images, wait_for_probe

pytestmark = pytest.mark.anyio

# One epoch of the tiny DDPM chapter (about a second); class-conditional on the 3 shapes,
# so the screen's class edit and guidance sweep have something to change.
QUICK = ["train.epochs=1", "sample.gif=false", "train.sample_every=0", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional and an unconditional tiny DDPM run, trained once for the module."""
    folder = tmp_path_factory.mktemp("inversion-screen")
    for name, extra in (("conditional", ["model.num_classes=3"]), ("unconditional", [])):
        assert run_cli("run", "ddpm-rgb-32", "--out", folder / name,
                       *tiny_args(*QUICK, *extra, base=TINY_DDPM)) == 0
    return folder


def field_input(app, key: str) -> Input:
    return app.screen.query_one(f"#field-{key.replace('.', '-')}", RecipeField).query_one(Input)


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def until(pilot, condition, what: str, timeout: float = 10.0) -> None:
    """Let the app handle what was typed until `condition()` holds (polls; never a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await pilot.pause(0.05)


async def fill_in(pilot, **values: str) -> None:
    """Type each [invert] value into its field, one after the other as a person would, until the recipe holds it.

    (A recipe change rewrites every other field's text from the recipe: typing into two
    fields in one go would race with that.)"""
    for key, value in values.items():
        field_input(pilot.app, f"invert.{key}").value = value
        await until(pilot, lambda: pilot.app.recipe_value(f"invert.{key}") == parse_toml_value(value),
                    f"the recipe did not take invert.{key} = {value}")


async def invert(pilot, timeout: float = 60.0) -> None:
    """ctrl+r, then wait for the inversion job and its images (polls; never a blind sleep)."""
    deadline = time.monotonic() + timeout
    await pilot.press("ctrl+r")
    while pilot.app.screen.inverting:
        assert time.monotonic() < deadline, "the inversion job did not finish"
        await pilot.pause(0.1)
    await wait_for_images(pilot, deadline)


async def open_inversion(pilot) -> InversionScreen:
    await pilot.press("7")
    assert isinstance(pilot.app.screen, InversionScreen)
    await wait_for_probe(pilot)
    return pilot.app.screen


async def test_inverting_a_run_shows_the_four_rows_and_the_error_table(runs):
    app = DifflabApp(device="cpu")
    async with app.run_test(size=(100, 32)) as pilot:
        screen = await open_inversion(pilot)
        await fill_in(pilot, source=str(runs / "conditional"), images="[0, 1]", steps="4", start_step="2",
                      edit_class="2", sweep_steps="[2, 4]", sweep_guidance="[1, 3]")
        assert app.recipe.invert.steps == 4 and app.recipe.invert.edit_class == 2 and app.dirty
        await invert(pilot)
        assert errors(app) == []

        for grid in ("originals", "inverted-noise", "reconstructions", "edits"):
            row = screen.query_one(f"#row-{grid}")
            assert row.display and row.query_one(TerminalImage).image.width > 2 * 16  # two 8 px images, at 2x
        assert "class 2" in str(screen.query_one("#row-edits Label", Label).render())

        table = screen.query_one("#errors", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [r[0] for r in rows] == ["reconstruction", "random noise instead", "step sweep", "step sweep",
                                        "guidance sweep", "guidance sweep"]
        mse = {r[0]: float(r[3]) for r in rows[:2]}
        assert 0 < mse["reconstruction"] < mse["random noise instead"] / 2, mse
        assert [(r[1], r[2]) for r in rows[2:]] == [("2", "1"), ("4", "1"), ("4", "1"), ("4", "3")]

        written = json.loads((runs / "conditional" / "inversion" / "errors.json").read_text())
        assert f"{written['mse']:.5f}" == rows[0][3]
        assert str(runs / "conditional" / "inversion") in str(screen.query_one("#folder", Static).render())
        bar = screen.query_one("#progress", ProgressBar)
        assert bar.total == 44 and bar.progress == bar.total  # every model call, both ways and the sweeps


async def test_a_bad_source_or_a_class_edit_of_an_unconditional_model_is_an_error(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pipeline's inversion is written to ./inversion-NAME, as `difflab invert` does
    app = DifflabApp(device="cpu")
    async with app.run_test(size=(100, 32)) as pilot:
        screen = await open_inversion(pilot)
        await fill_in(pilot, source=str(tmp_path / "no-such-run"), images="[0]", steps="2")
        await invert(pilot)
        assert any("no such folder" in message for message in errors(app))

        await fill_in(pilot, source=str(runs / "unconditional"), edit_class="1")
        await invert(pilot)
        assert any("this one is unconditional" in message for message in errors(app))
        assert not screen.query_one("#errors").display

        steps = screen.query_one("#field-invert-steps", RecipeField)
        steps.query_one(Input).value = "0"
        await until(pilot, lambda: steps.error, "no message under the steps field")
        assert "invert.steps = 0: input should be greater than 0" in steps.error
        assert app.recipe.invert.steps == 2  # the last valid value

        await fill_in(pilot, source=str(runs / "unconditional" / "pipeline"), edit_class="-1", steps="2")
        await invert(pilot)
        assert screen.query_one("#errors", DataTable).row_count == 2
        assert (tmp_path / "inversion-pipeline" / "inversion" / "errors.json").is_file()


def test_the_inversion_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    async def settle(pilot):
        await pilot.press("7")
        await wait_for_probe(pilot)
        # the placeholder names whatever ./runs holds: show a fixed one
        field_input(pilot.app, "invert.source").placeholder = "runs/my-run"
        for box in pilot.app.query(Input):
            box.cursor_blink = False
        await pilot.pause(0.1)

    assert snap_compare(DifflabApp(), terminal_size=(100, 32), run_before=settle)
