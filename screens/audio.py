"""Audio screen: a sound, its mel spectrogram image, and what the round trip back to sound loses.

Pick any clip of the recipe's sounds (generated families or a WAV folder): its waveform,
the spectrogram image the model trains on, and the round-trip error of the mel settings
on the left, recomputed on the worker as they change. Below, a run's generated clips
(WAV files beside their spectrograms): over SSH there is no speaker, so the files are
the output.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, Static
from textual_plot import HiResMode, PlotWidget

from difflab.jobs import launch

from .base import LabScreen
from .widgets import RecipeField, TerminalImage, margin_plot

WAVE_COLOUR = "#4fc3f7"


class AudioScreen(LabScreen):
    """[audio]: sample rate, clip length and mel settings; waveform, spectrogram and round-trip error."""

    SCREEN_NAME = "audio"
    CSS_PATH = "audio.tcss"
    _generated: list = []

    def fields(self) -> list[Widget]:
        return [
            _plain_field("clip", "clip number (not in the recipe)", "0"),
            _plain_field("run", "run folder with generated clips (empty: newest in runs/)", ""),
            RecipeField("audio.sample_rate", "sample rate (Hz)"),
            RecipeField("audio.clip_seconds", "clip length (s)"),
            RecipeField("audio.n_fft", "STFT window (samples)"),
            RecipeField("audio.hop_length", "hop (samples per image column)"),
            RecipeField("audio.n_mels", "mel bands (image rows)"),
            RecipeField("audio.f_min", "lowest frequency (Hz)"),
            RecipeField("audio.f_max", "highest frequency (Hz, 0 = half the rate)"),
            RecipeField("audio.top_db", "dynamic range kept (dB)"),
            RecipeField("audio.griffin_lim_iters", "Griffin-Lim iterations"),
        ]

    def compose_output(self) -> ComposeResult:
        yield Static(id="clip-title")
        waveform = margin_plot("waveform", bottom=1, left=5)
        waveform.can_focus = False  # nothing to pan or zoom: not a Tab stop (it would show no focus)
        yield waveform
        yield Label("mel spectrogram, as the model sees it (time →, pitch ↑)", classes="section-title")
        yield TerminalImage(id="spectrogram")
        yield Static(id="round-trip")
        yield Label("generated clips", classes="section-title")
        yield Static(id="run-title")
        yield DataTable(id="generated", cursor_type="row", zebra_stripes=True)
        yield TerminalImage(id="generated-spectrogram")

    def make_probe(self):
        run = self.query_one("#run", Input).value.strip()
        return launch.probe("probes:AudioProbe", recipe=self.app.recipe, recipe_dir=self.app.recipe_dir,
                            clip=self._clip_number(), run_dir=Path(run).expanduser() if run else None)

    def _clip_number(self) -> int:
        text = self.query_one("#clip", Input).value.strip()
        return int(text) if text.isdigit() else 0

    @on(Input.Submitted, "#clip, #run")
    @on(Input.Changed, "#clip, #run")
    def _picked(self, event: Input.Changed) -> None:
        event.stop()
        if self.is_mounted and self.is_current:
            self._recipe_changed(self.app.recipe)  # the same debounced probe as a recipe change

    def show_result(self, summary: dict) -> None:
        audio = self.app.recipe.audio
        self.query_one("#clip-title", Static).update(
            f"[b]clip {summary['clip']}[/b] of {summary['count']:,} ({escape(str(summary['source']))}): "
            f"[b]{summary['family']}[/b], {audio.clip_seconds:g} s at {audio.sample_rate:,} Hz")
        plot = self.query_one("#waveform", PlotWidget)
        plot.clear()
        plot.plot(*summary["waveform"], line_style=WAVE_COLOUR, hires_mode=HiResMode.BRAILLE)
        plot.set_ylimits(-1, 1)
        self.query_one("#spectrogram", TerminalImage).image = summary["spectrogram"]
        self.query_one("#round-trip", Static).update(_round_trip_text(summary, self.app.recipe.dataset.image_size))
        self._show_generated(summary)

    def _show_generated(self, summary: dict) -> None:
        self._generated = summary["generated"]
        run = summary["run_dir"]
        self.query_one("#run-title", Static).update(
            f"{len(self._generated)} WAV files in {escape(str(run))}/samples" if run else
            "none yet: train this recipe (ctrl+r on screen 4, or `difflab run`); its samples are written as WAV files")
        table = self.query_one("#generated", DataTable)
        table.clear(columns=True)
        table.add_columns("file", "seconds")
        for clip in self._generated:
            table.add_row(str(clip.path.relative_to(run)), f"{clip.seconds:.2f}")
        self.query_one("#generated-spectrogram", TerminalImage).image = (
            self._generated[0].spectrogram if self._generated else None)

    @on(DataTable.RowHighlighted, "#generated")
    def _generated_picked(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self._generated):
            self.query_one("#generated-spectrogram", TerminalImage).image = self._generated[event.cursor_row].spectrogram


def _plain_field(name: str, label: str, value: str) -> Vertical:
    """A screen setting that is not part of the recipe, laid out like a RecipeField."""
    return Vertical(Label(label, classes="field-label"), Input(value, id=name), classes="plain-field")



def _round_trip_text(summary: dict, image_size: int) -> str:
    bands, frames = summary["shape"]
    fit = "" if (bands, frames) == (image_size, image_size) else f", resized to {image_size}×{image_size}"
    clip, dataset = summary["clip_error"], summary["dataset_error"]
    return (f"{bands} mel bands × {frames} frames{fit}\n"
            f"round trip sound → image → sound: spectral convergence [b]{clip.spectral_convergence:.3f}[/b], "
            f"log-spectral distance [b]{clip.log_spectral_distance:.1f} dB[/b] (this clip); "
            f"{dataset.spectral_convergence:.3f} and {dataset.log_spectral_distance:.1f} dB over "
            f"{summary['compared']} clips (0 would be perfect; `difflab audio roundtrip` compares settings)")
