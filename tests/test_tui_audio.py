"""The audio screen, used as a person would: pick a clip, change the mel settings, browse generated clips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from textual.content import Content
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static
from textual_plot import PlotWidget

from difflab.diffusion.audio import write_clips
from difflab.runtime.catalog import find_recipe
from difflab.screens.app import DifflabApp
from difflab.screens.audio import AudioScreen
from difflab.screens.widgets import TerminalImage

SIZE = (100, 32)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def wait_until(pilot: Pilot, done: Callable[[], bool], timeout_s: float = 90) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if done():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"still waiting after {timeout_s} s")


def text(screen: AudioScreen, widget_id: str) -> str:
    """What a Static shows, without its markup."""
    return Content.from_markup(str(screen.query_one(f"#{widget_id}", Static).content)).plain


async def open_audio(pilot: Pilot) -> AudioScreen:
    await pilot.press("6")
    screen = pilot.app.screen
    await wait_until(pilot, lambda: not screen.probing and screen.query_one("#spectrogram", TerminalImage).image)
    return screen


async def test_key_6_shows_a_clip_its_spectrogram_and_the_round_trip_error():
    app = DifflabApp(find_recipe("audio-spectrogram"), device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_audio(pilot)
        assert isinstance(screen, AudioScreen)
        assert "clip 0 of 1,000 (generated sounds): tone" in text(screen, "clip-title")
        assert len(screen.query_one("#waveform", PlotWidget)._datasets) == 1
        assert screen.query_one("#spectrogram", TerminalImage).image.size == (64, 64)  # 32x32, shown 2x
        assert "32 mel bands × 32 frames\n" in text(screen, "round-trip")
        assert "spectral convergence" in text(screen, "round-trip")


async def test_changing_the_mel_bands_edits_the_recipe_and_recomputes_the_error():
    app = DifflabApp(find_recipe("audio-spectrogram"), device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_audio(pilot)
        before = text(screen, "round-trip")
        screen.query_one("#field-audio-n_mels Input", Input).value = "64"
        await wait_until(pilot, lambda: text(screen, "round-trip") != before and not screen.probing)
        assert app.recipe.audio.n_mels == 64 and app.dirty
        assert "64 mel bands × 32 frames, resized to 32×32" in text(screen, "round-trip")
        screen.query_one("#clip", Input).value = "3"
        await wait_until(pilot, lambda: "clip 3 " in text(screen, "clip-title") and not screen.probing)
        assert ": hit" in text(screen, "clip-title") and app.recipe.audio.n_mels == 64


async def test_a_runs_generated_clips_are_listed_with_their_spectrograms(tmp_path):
    recipe = DifflabApp(find_recipe("audio-spectrogram")).recipe
    write_clips(torch.rand(3, 1, 32, 32), (0.0, 1.0), recipe.audio, tmp_path / "run" / "samples" / "audio")
    app = DifflabApp(find_recipe("audio-spectrogram"), device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_audio(pilot)
        screen.query_one("#run", Input).value = str(tmp_path / "run")
        table = screen.query_one("#generated", DataTable)
        await wait_until(pilot, lambda: table.row_count == 3 and not screen.probing)
        assert "3 WAV files in" in text(screen, "run-title")
        assert table.get_row_at(0) == ["samples/audio/clip_000.wav", "1.00"]
        assert screen.query_one("#generated-spectrogram", TerminalImage).image.size == (128, 128)
