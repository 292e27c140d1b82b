"""The sampling screen, driven with Textual's Pilot: sample a run, step through it, compare, save."""

from __future__ import annotations

import json
import time

import pytest
from textual.widgets import Input, Select, Static

from difflab.screens.app import DifflabApp
from difflab.screens.picture import Picture
from difflab.screens.sampling import SamplingScreen
from tests.conftest import wait_for_probe
from tests.test_stepthrough import (  # noqa: F401  (module-scoped fixtures, trained once here)
    trained_ddpm_run,
    trained_latent_run,
    trained_toy_run,
)
from tests.test_tui_fit import cut_widgets

pytestmark = pytest.mark.anyio


def step_label(app) -> str:
    return str(app.screen.query_one("#step-label", Static).render())


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def fill_in(pilot, source, sampler="ddim", compare="dpm-solver++", steps="4", images="2") -> None:
    screen = pilot.app.screen
    screen.query_one("#source", Input).value = str(source)
    screen.query_one("#sampler", Select).value = sampler
    screen.query_one("#compare", Select).value = compare
    screen.query_one("#steps", Input).value = steps
    screen.query_one("#images", Input).value = images
    await pilot.pause(0.05)


async def wait_for_worker(pilot, timeout: float = 60.0) -> None:
    """Let the screen's step-through or save job finish (polls; never a blind sleep)."""
    deadline = time.monotonic() + timeout
    await pilot.pause(0.1)
    while pilot.app.screen.sampling:
        assert time.monotonic() < deadline, "the sampling job did not finish"
        await pilot.pause(0.1)
    await pilot.pause(0.1)


async def test_a_toy_run_is_offered_the_toy_sampler_and_samples_with_it(trained_toy_run, trained_ddpm_run):  # noqa: F811
    app = DifflabApp()  # the default recipe: from-scratch, the toy schedule, as trained_toy_run
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        await wait_for_probe(pilot)
        screen = app.screen
        screen.query_one("#source", Input).value = str(trained_toy_run)
        await pilot.pause(0.1)
        sampler = screen.query_one("#sampler", Select)
        assert sampler.value == "toy" and [o[0] for o in sampler._options] == ["toy"]
        screen.query_one("#steps", Input).value = "4"
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert errors(app) == [] and list(screen.result["samplers"]) == ["toy"]
        assert step_label(app).startswith("step 1 / 4")

        screen.query_one("#source", Input).value = str(trained_ddpm_run)  # a DDPM run: diffusers' samplers
        await pilot.pause(0.1)
        assert sampler.value == "ddim" and "toy" not in [o[0] for o in sampler._options]


async def test_step_through_two_samplers_then_save_png_and_gif(trained_ddpm_run):  # noqa: F811
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        assert isinstance(app.screen, SamplingScreen)
        await wait_for_probe(pilot)
        await fill_in(pilot, trained_ddpm_run)
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert errors(app) == []
        assert step_label(app).startswith("step 1 / 4")
        assert app.screen.query_one("#row-second").display  # two samplers, two rows
        assert headings(app) == ["model input x_t", "predicted x0"]  # pixels: no latent column
        assert not any(p.display for p in app.screen.query(".pair .latent"))

        await pilot.press("right")
        assert step_label(app).startswith("step 2 / 4")
        await pilot.press("left", "left")  # no step before the first
        assert step_label(app).startswith("step 1 / 4")
        await pilot.press("end")
        assert step_label(app).startswith("step 4 / 4")

        await pilot.press("ctrl+g")
        await wait_for_worker(pilot)
        samples = trained_ddpm_run / "samples"
        for sampler in ("ddim", "dpm-solver++"):
            assert (samples / f"{sampler}-4steps-seed0.png").is_file()
            assert (samples / f"{sampler}-4steps-seed0.gif").is_file()
        assert errors(app) == []


def headings(app) -> list[str]:
    """The step-through's column headings that show."""
    return [str(label.render()) for label in app.screen.query("#headings Label") if label.display]


def shown(picture: Picture) -> bool:
    return picture.image is not None and all(node.display for node in picture.ancestors_with_self
                                             if hasattr(node, "display"))


async def test_a_latent_run_shows_its_latent_channels_beside_x_t_and_x0_decoded(trained_latent_run):  # noqa: F811
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        await wait_for_probe(pilot)
        await fill_in(pilot, trained_latent_run, steps="3")
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        screen = app.screen
        assert errors(app) == [] and step_label(app).startswith("step 1 / 3")
        assert headings(app) == ["latent x_t (4 channels)", "x_t decoded", "predicted x0 decoded"]
        for row in ("#row-first", "#row-second"):
            latent, x_t, x0 = (screen.query_one(f"{row} .{name}", Picture) for name in ("latent", "x-t", "x0"))
            assert all(shown(p) for p in (latent, x_t, x0))
            # two images each, on 2 px padding: 9 px blocks of 2x2 latent channels (4x4, 1 px apart)
            # beside 8 px RGB images decoded
            assert latent.tile_count == x_t.tile_count == x0.tile_count == 2
            assert latent.image.size == (2 * 11 + 2, 13) and x_t.image.size == x0.image.size == (2 * 10 + 2, 12)
            assert latent.title.startswith("latent x_t (4 channels) · ") and x0.title.startswith("predicted x0 decoded")
        first = screen.query_one("#row-first .latent", Picture).image
        await pilot.press("right")
        assert screen.query_one("#row-first .latent", Picture).image is not first  # the latent steps too

        for size in ((80, 24), (160, 48), (100, 32)):  # headings wrap, nothing cut, every picture shows
            await pilot.resize_terminal(*size)
            await pilot.pause(0.2)
            assert cut_widgets(screen) == [], size
            assert all(p.layout_shown is not None for p in screen.query(Picture) if shown(p)), size


async def test_a_bad_source_is_an_error_and_the_screen_stays_usable(tmp_path, trained_ddpm_run):  # noqa: F811
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        await wait_for_probe(pilot)
        await fill_in(pilot, tmp_path / "no-such-run", compare="none")
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert any("not a run folder" in message for message in errors(app))

        app.screen.query_one("#steps", Input).value = "two"
        await pilot.press("ctrl+r")
        assert any("steps = 'two'" in message for message in errors(app))

        await fill_in(pilot, trained_ddpm_run, compare="none", steps="2")
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert step_label(app).startswith("step 1 / 2")
        assert not app.screen.query_one("#row-second").display


async def test_a_class_and_loss_guidance_from_the_screen(trained_ddpm_run):  # noqa: F811
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        await wait_for_probe(pilot)
        await fill_in(pilot, trained_ddpm_run, compare="none", steps="3")
        screen = app.screen
        screen.query_one("#class", Input).value = "1"
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert any("sample.class_labels" in m and "[1]" in m for m in errors(app)), errors(app)  # unconditional model

        screen.query_one("#class", Input).value = ""
        screen.query_one("#guidance", Select).value = "color"
        screen.query_one("#strength", Input).value = "40"
        await pilot.press("ctrl+r")
        await wait_for_worker(pilot)
        assert "guidance moved x by" in str(screen.query_one("#row-first .sampler-name").render())

        screen.query_one("#sweep", Input).value = "guidance.scale=0,40"
        await pilot.press("ctrl+e")
        await wait_for_worker(pilot)
        assert errors(app) == [] or all("class_labels" in m for m in errors(app))
        written = sorted((trained_ddpm_run / "samples").glob("sweep-guidance.scale-*.png"))
        assert written and str(written[-1]) in step_label(app)
        rows = json.loads(written[-1].with_suffix(".json").read_text())["rows"]
        assert [row["label"] for row in rows] == ["guidance.scale = 0", "guidance.scale = 40"]
        assert screen.query_one("#final-first").image is not None  # the labelled grid, on screen


def test_the_sampling_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    async def settle(pilot):
        await pilot.press("5")
        await wait_for_probe(pilot)
        pilot.app.screen.query_one("#source", Input).value = "runs/my-run"  # not whatever ./runs holds
        for box in pilot.app.query(Input):
            box.cursor_blink = False
        await pilot.pause(0.1)

    assert snap_compare(DifflabApp(), terminal_size=(100, 32), run_before=settle)


async def test_home_and_end_jump_to_the_first_and_last_step_even_from_the_pane():
    from types import SimpleNamespace

    from PIL import Image
    from textual.containers import VerticalScroll

    from difflab.runtime.events import JobFinished

    strip = Image.new("RGB", (62, 32), (127, 127, 127))
    steps = SimpleNamespace(inputs=[strip] * 5, predictions=[strip] * 5, final=strip,
                            trajectory=SimpleNamespace(guidance_norms=[]))
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        screen = app.screen
        screen._on_sampled(JobFinished(0, "finished", {"samplers": {"ddim": steps}}))
        await pilot.pause()
        screen.query_one(".output", VerticalScroll).focus()  # a click on the pane, or Tab
        await pilot.press("end")
        assert step_label(app).startswith("step 5 / 5")
        await pilot.press("home")
        assert step_label(app).startswith("step 1 / 5")
        steps_field = screen.query_one("#steps", Input)
        steps_field.focus()
        steps_field.cursor_position = 0
        await pilot.press("end")  # in a field: the end of its text, not the last step
        assert steps_field.cursor_position == len(steps_field.value) and step_label(app).startswith("step 1 / 5")


async def test_a_bad_eta_is_said_under_its_field_as_it_is_typed():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("5")
        screen = app.screen
        error = screen.query_one("#eta-error")
        screen.query_one("#eta", Input).value = "2"
        await pilot.pause()
        assert error.display and "eta = 2: must be from 0.0 to 1.0" in str(error.render())
        screen.query_one("#eta", Input).value = "abc"
        await pilot.pause()
        assert "expected a number" in str(error.render())
        screen.query_one("#eta", Input).value = "0.5"
        await pilot.pause()
        assert not error.display
