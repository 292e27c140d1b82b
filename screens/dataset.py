"""Dataset screen: choose where the images come from; see real samples and what they hold."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.markup import escape
from textual.widgets import DataTable, Label, Static

from difflab.jobs import launch

from .base import LabScreen
from .widgets import RecipeField, TerminalImage


class DatasetScreen(LabScreen):
    """[dataset]: source, size, channels, value range; a grid of real samples and their statistics."""

    SCREEN_NAME = "dataset"
    CSS_PATH = "dataset.tcss"

    def fields(self) -> list[RecipeField]:
        return [
            RecipeField("dataset.source", "source", ["digits", "shapes", "mnist", "fashion-mnist", "folder", "audio"]),
            RecipeField("dataset.path", "path (mnist / fashion-mnist root, or image folder)"),
            RecipeField("dataset.image_size", "image size (pixels)"),
            RecipeField("dataset.channels", "channels", ["1", "3"]),
            RecipeField("dataset.value_range", "value range", ["0..1", "-1..1"]),
            RecipeField("dataset.limit", "use at most (0 = all)"),
            RecipeField("dataset.num_images", "shapes: how many to generate"),
            RecipeField("dataset.flip", "random horizontal flip"),
        ]

    def compose_output(self) -> ComposeResult:
        yield Label("real samples", classes="section-title")
        yield TerminalImage(id="samples")
        yield Static(id="facts")
        yield Label("images per class", classes="section-title")
        yield DataTable(id="classes", show_cursor=False, zebra_stripes=True)

    def make_probe(self):
        return launch.probe("probes:DatasetProbe", recipe=self.app.recipe, recipe_dir=self.app.recipe_dir, count=16)

    def show_result(self, summary: dict) -> None:
        info = summary["summary"]
        self.query_one("#samples", TerminalImage).image = summary["grid"]
        c, h, w = info.shape
        self.query_one("#facts", Static).update(
            f"[b]{escape(str(info.name))}[/b]: {info.size:,} images of {c}×{h}×{w}, "
            f"values {info.value_min:.2f} … {info.value_max:.2f}")
        table = self.query_one("#classes", DataTable)
        table.clear(columns=True)
        table.add_columns("class", "images")
        for name, count in info.class_counts.items():
            table.add_row(name, f"{count:,}")
        if not info.class_counts:
            table.add_row("(no classes)", f"{info.size:,}")
