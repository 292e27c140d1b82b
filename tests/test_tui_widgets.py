"""Shared widgets: terminal images are turned into cells off the UI thread."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image
from textual.app import App
from textual_image.renderable.halfcell import Image as HalfcellRenderable

from difflab.screens.widgets import HalfcellPreview
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
