"""Pictures use the space they have: the training preview and the sampling strips show as many
samples as stay readable (12 terminal pixels a digit or more at 100×32) at 80×24, 100×32 and
160×48, and `f` shows any of them full-screen. Driven with Pilot, plus a snapshot at each size."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw
from textual.widgets import Input

from difflab.runtime.events import JobFinished, PreviewReady
from difflab.screens.app import DifflabApp
from difflab.screens.picture import MIN_TILE_PX, Picture, PictureViewer, fit_tiles, grid_tiles
from difflab.screens.widgets import TerminalImage, cell_pixels
from tests.conftest import wait_for_images

pytestmark = pytest.mark.anyio

SIZES = [(80, 24), (100, 32), (160, 48)]
READABLE_FROM = (100, 32)  # the smallest terminal where every digit must be MIN_TILE_PX or more


def digit_grid(count: int, columns: int, tile: int = 56, pad: int = 4) -> Image.Image:
    """A grid as the engine's make_grid draws it: 28 px "digits" (rings of growing size) on grey padding."""
    rows = -(-count // columns)
    grid = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + pad) + pad), (127, 127, 127))
    for index in range(count):
        row, column = divmod(index, columns)
        digit = Image.new("RGB", (tile, tile), (0, 0, 0))
        inset = 4 + index % 8
        ImageDraw.Draw(digit).ellipse((inset, inset, tile - inset, tile - inset), outline=(255, 255, 255), width=5)
        grid.paste(digit, (pad + column * (tile + pad), pad + row * (tile + pad)))
    return grid


def a_sampling_result(samplers: tuple[str, ...], images: int = 4, steps: int = 3) -> dict:
    """What the step-through job hands back: per sampler, one strip of `images` samples per step."""
    strip = digit_grid(images, images, tile=28, pad=2)  # make_grid(nrow=count): one row, unscaled
    steps_of = SimpleNamespace(inputs=[strip] * steps, predictions=[strip] * steps, final=strip,
                               trajectory=SimpleNamespace(guidance_norms=[]))
    return {"samplers": {name: steps_of for name in samplers}}


async def show_pictures(pilot, key: str, samplers: tuple[str, ...] = ("ddim", "dpm-solver++")) -> None:
    """Open screen `key` and give it pictures through the events its jobs send."""
    app = pilot.app
    await pilot.press(key)
    await pilot.pause(0.2)
    screen = app.screen
    if key == "4":
        screen._on_preview(PreviewReady(job_id=0, step=500, image=digit_grid(16, 4)))
    else:
        screen._on_sampled(JobFinished(job_id=0, status="finished", summary=a_sampling_result(samplers)))
    await pilot.pause(0.2)
    await wait_for_images(pilot, time.monotonic() + 30)


def shown_pictures(screen) -> list[Picture]:
    return [p for p in screen.query(Picture) if p.image is not None
            and all(node.display for node in p.ancestors_with_self if hasattr(node, "display"))]


def test_a_grid_is_cut_into_its_images_and_a_figure_is_not():
    tiles = grid_tiles(digit_grid(7, 3))  # make_grid leaves the last row's two slots empty
    assert len(tiles) == 7 and {tile.size for tile in tiles} == {(56, 56)}
    figure = Image.new("RGB", (200, 80), "white")  # a labelled sweep figure: text, white margins
    ImageDraw.Draw(figure).text((4, 30), "guidance_scale = 3", fill="black")
    ImageDraw.Draw(figure).rectangle((120, 10, 190, 70), fill=(30, 60, 90))
    whole = grid_tiles(figure)
    assert len(whole) == 1 and whole[0] is figure


def test_fewer_images_larger_rather_than_many_unreadable():
    four = fit_tiles(16, 56, 56, box_w=33, box_h=34, gap=1)
    assert (four.count, four.columns, four.rows) == (4, 2, 2) and four.width >= MIN_TILE_PX
    one = fit_tiles(16, 56, 56, box_w=10, box_h=10, gap=1)  # not even one fits readably: the largest one
    assert (one.count, one.width) == (1, 10)
    assert fit_tiles(16, 56, 56, box_w=0, box_h=10, gap=1) is None


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("samplers", [("ddim",), ("ddim", "dpm-solver++")], ids=["one-sampler", "two-samplers"])
async def test_every_picture_uses_the_space_it_has_and_digits_stay_readable(size, samplers):
    app = DifflabApp()
    async with app.run_test(size=size) as pilot:
        for key in ("4", "5"):
            await show_pictures(pilot, key, samplers)
            pictures = shown_pictures(app.screen)
            assert len(pictures) == (1 if key == "4" else 3 * len(samplers)), pictures
            cell_w, cell_h = cell_pixels()
            for picture in pictures:
                box, shown = picture.content_size, picture.query_one(TerminalImage).size
                layout = picture.layout_shown
                assert layout is not None and shown.width <= box.width and shown.height <= box.height
                # no room left for another column or row of images (or, for one, it touches the box's edges)
                spare_w, spare_h = box.width * cell_w - layout.columns * layout.width, box.height * cell_h - layout.rows * layout.height
                assert spare_w < layout.width + 2 * cell_w or spare_h < layout.height + 2 * cell_h, (picture, box, layout)
                if size >= READABLE_FROM:
                    assert min(layout.width, layout.height) >= MIN_TILE_PX, (key, size, picture.title, layout)


async def test_f_shows_the_pictures_full_screen_and_escape_closes():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await show_pictures(pilot, "5", samplers=("ddim",))
        sampling = app.screen
        small = sampling.query_one(".x-t", Picture).layout_shown
        await pilot.press("f")
        assert isinstance(app.screen, PictureViewer)
        await pilot.pause(0.2)
        viewer = app.screen
        big = viewer.query_one("#viewer-picture", Picture).layout_shown
        assert big.width * big.count > small.width * small.count  # larger, or more of them
        title = str(viewer.query_one("#viewer-title").render())
        assert title.startswith("model input x_t · ddim") and "(1/3)" in title
        await pilot.press("right")
        assert "predicted x0" in str(viewer.query_one("#viewer-title").render())
        await pilot.press("escape")
        assert app.screen is sampling

        await show_pictures(pilot, "4")
        await pilot.press("f")
        assert isinstance(app.screen, PictureViewer)
        assert str(app.screen.query_one("#viewer-title").render()).startswith("preview · step 500")
        await pilot.press("escape")
        assert app.screen.SCREEN_NAME == "training"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", ["4", "5"], ids=["training", "sampling"])
def test_the_pictures_snapshot(snap_compare, monkeypatch, key, size):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has

    async def settle(pilot):
        deadline = time.monotonic() + 60
        while pilot.app.device_label == "…":  # the device probe's answer, not "…", in the status line
            assert time.monotonic() < deadline, "the device probe did not answer"
            await pilot.pause(0.1)
        await show_pictures(pilot, key)
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        if key == "5":
            pilot.app.screen.query_one("#source", Input).value = "runs/my-run"  # not whatever ./runs holds
        await pilot.pause(0.2)
        await wait_for_images(pilot, time.monotonic() + 30)

    assert snap_compare(DifflabApp(device="cpu"), terminal_size=size, run_before=settle)
