"""The schedule screen, used as a person would: open it, read the curves, change the schedule; for
a latent recipe, compare the image noised in pixels with it noised in the VAE's latent space."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label, Select, Static
from textual_plot import PlotWidget

from difflab.runtime.catalog import BuiltinRecipe
from difflab.screens.app import DifflabApp
from difflab.screens.schedule import ScheduleScreen
from difflab.screens.widgets import TerminalImage
from tests.test_stepthrough import save_tiny_vae
from tests.test_tui_fit import cut_widgets

SIZE = (100, 32)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"  # Textual runs on asyncio only


async def wait_until(pilot: Pilot, done: Callable[[], bool], timeout_s: float = 60) -> None:
    """Let the app run until `done()` holds (the first probe imports torch: seconds, not ms)."""
    for _ in range(int(timeout_s / 0.1)):
        if done():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"still waiting after {timeout_s} s")


async def open_schedule(pilot: Pilot) -> ScheduleScreen:
    """Press 2 and wait until the screen shows its first probe's result."""
    await pilot.press("2")
    screen = pilot.app.screen
    await wait_until(pilot, lambda: not screen.probing and strip(screen, "ddpm").image is not None)
    return screen


def strip(screen: ScheduleScreen, kind: str) -> TerminalImage:
    """The noised strip of one corruption process: "ddpm", "toy", or a latent recipe's "latent"."""
    return screen.query_one(f"#{kind}-strip", TerminalImage)


def lines_in(screen: ScheduleScreen, plot_id: str) -> int:
    """How many curves a plot draws."""
    # PlotWidget has no public list of what it draws; its datasets are what the user sees
    return len(screen.query_one(f"#{plot_id}", PlotWidget)._datasets)


async def test_key_2_shows_both_schedules_curves_and_strips():
    app = DifflabApp(device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        assert isinstance(screen, ScheduleScreen)
        # √ᾱ and √(1−ᾱ) for the recipe's schedule and the default comparison; log SNR for both
        assert lines_in(screen, "amounts") == 4
        assert lines_in(screen, "log-snr") == 2
        assert strip(screen, "toy").image.size == strip(screen, "ddpm").image.size
        assert "0, 143, 285, 428, 571, 714, 856, 999" in str(screen.query_one("#timesteps", Static).content)


async def test_choosing_a_beta_schedule_edits_the_recipe_and_renoises_the_strip():
    app = DifflabApp(device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        before = strip(screen, "ddpm").image
        screen.query_one("#field-schedule-beta_schedule Select", Select).value = "squaredcos_cap_v2"
        await wait_until(pilot, lambda: strip(screen, "ddpm").image is not before and not screen.probing)
        assert app.recipe.schedule.beta_schedule == "squaredcos_cap_v2"
        assert app.dirty
        assert "squaredcos_cap_v2" in str(screen.query_one("#key", Static).content)


async def test_the_comparison_is_not_saved_in_the_recipe():
    app = DifflabApp(device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        recipe = app.recipe
        screen.query_one("#compare", Select).value = "none"
        await wait_until(pilot, lambda: lines_in(screen, "amounts") == 2 and not screen.probing)
        assert lines_in(screen, "log-snr") == 1
        assert app.recipe is recipe and not app.dirty


async def test_beta_start_above_beta_end_is_refused_under_the_field():
    app = DifflabApp(device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        field = screen.query_one("#field-schedule-beta_start")
        box = field.query_one(Input)
        box.focus()
        await pilot.press("end", *["backspace"] * len(box.value), "0", ".", "5")
        message = str(field.query_one(".field-error", Label).content)
        assert "schedule.beta_start = 0.5: must be below schedule.beta_end = 0.02" in message
        assert app.recipe.schedule.beta_start == 0.0001


async def _open_schedule_quietly(pilot: Pilot) -> None:
    # snap_compare runs this before its own key presses, so the screen is opened here
    await open_schedule(pilot)
    for box in pilot.app.query(Input):
        box.cursor_blink = False


def test_schedule_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    # device="cpu": the status line names the device, and a GPU machine would name its card
    assert snap_compare(DifflabApp(device="cpu"), terminal_size=SIZE, run_before=_open_schedule_quietly)


LATENT_RECIPE = """
[dataset]
source = "shapes"
num_images = 16
image_size = 16
channels = 3
value_range = "-1..1"
[latent]
vae = "{vae}"
[schedule]
kind = "ddpm"
[model]
kind = "unet2d"
block_out_channels = [16, 32]
down_block_types = ["DownBlock2D", "DownBlock2D"]
up_block_types = ["UpBlock2D", "UpBlock2D"]
norm_num_groups = 8
[sample]
sampler = "ddim"
"""


def text_of(screen: ScheduleScreen, widget_id: str) -> str:
    return str(screen.query_one(f"#{widget_id}").render())


async def test_a_latent_recipe_noises_the_image_in_latent_space_beside_pixels(tmp_path, recipe_file):
    save_tiny_vae(tmp_path / "vae", image_size=16)  # 16 px RGB -> 4x8x8 latents
    app = DifflabApp(recipe_file(LATENT_RECIPE.format(vae="vae")), device="cpu")  # relative to the recipe
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        latent, pixels = strip(screen, "latent"), strip(screen, "ddpm")
        assert latent.display and latent.image is not None and not screen.query_one("#latent-note").display
        # the same 8 timesteps of the same image, decoded back to 16 px: a strip of pixels' size
        assert latent.image.size == pixels.image.size and latent.image.tobytes() != pixels.image.tobytes()
        assert text_of(screen, "ddpm-title").startswith("DDPM on pixels:")
        assert "used for training" not in text_of(screen, "ddpm-title")
        title = text_of(screen, "latent-title")
        assert title.startswith("DDPM on latents (4×8×8), decoded:") and "used for training" in title
        assert str(screen.query_one("#timesteps", Static).content).startswith("all three at t = 0, 143")
        for size in ((80, 24), (160, 48)):
            await pilot.resize_terminal(*size)
            await pilot.pause(0.2)
            assert cut_widgets(screen) == [], size


async def test_a_builtin_vae_not_trained_yet_is_said_in_one_line_and_not_trained(tmp_path, recipe_file,
                                                                                 monkeypatch, classifier_cache):
    vae_recipe = tmp_path / "vae-test.toml"  # a built-in VAE recipe as the catalog lists one
    vae_recipe.write_text('[dataset]\nsource = "shapes"\nimage_size = 16\nchannels = 3\nvalue_range = "-1..1"\n'
                          '[model]\nkind = "autoencoder-kl"\nblock_out_channels = [16, 32]\nnorm_num_groups = 8\n')
    monkeypatch.setattr("difflab.diffusion.latents.builtin_recipes",
                        lambda: [BuiltinRecipe("vae-test", "", vae_recipe)])
    app = DifflabApp(recipe_file(LATENT_RECIPE.format(vae="vae-test")), device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        note = text_of(screen, "latent-note")
        assert screen.query_one("#latent-note").display and not strip(screen, "latent").display
        assert note.startswith("the VAE 'vae-test' is not trained yet") and "difflab run vae-test" in note
        assert screen.query_one("#latent-note").size.height <= 2  # one sentence, wrapped at most once at 100
        assert str(screen.query_one("#timesteps", Static).content).startswith("both at t =")
    # a probe never trains the VAE (other tests' built-in VAEs may share this cache)
    assert not list((classifier_cache / "vaes").glob("vae-test*"))


async def test_a_pixel_recipe_has_no_latent_row():
    app = DifflabApp(device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_schedule(pilot)
        assert not any(widget.display for widget in screen.query(".latent"))
        assert text_of(screen, "ddpm-title").startswith("DDPM: ")
