"""Dataset screen: choose where the images come from; see real samples and what they hold."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.markup import escape
from textual.widgets import DataTable, Label, Static

from difflab.jobs import launch
from difflab.recipe import SOURCES

from .base import LabScreen
from .widgets import RecipeField, TerminalImage

# The fields that mean something only for some sources; the others are hidden (key: sources).
SOURCE_FIELDS = {
    "dataset.split": ("mnist", "fashion-mnist", "hub", "imagefolder"),
    "dataset.image_column": ("hub", "imagefolder"),
    "dataset.label_column": ("hub", "imagefolder"),
    "dataset.caption_column": ("hub", "imagefolder"),
}


class DatasetScreen(LabScreen):
    """[dataset]: source, size, channels, value range; a grid of real samples and their statistics."""

    SCREEN_NAME = "dataset"
    CSS_PATH = "dataset.tcss"

    def fields(self) -> list[RecipeField]:
        return [
            RecipeField("dataset.source", "source", list(SOURCES)),
            RecipeField("dataset.path", "path (mnist / fashion-mnist root, folder, or hub owner/name)"),
            RecipeField("dataset.split", "split (train, test, …; hub: slices like train[:500])"),
            RecipeField("dataset.image_column", "column of images"),
            RecipeField("dataset.label_column", "column of class labels (empty = none)"),
            RecipeField("dataset.caption_column", "column of captions (empty = none)"),
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
        yield Static(id="captions")
        yield Label("images per class", classes="section-title")
        yield DataTable(id="classes", show_cursor=False, zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.watch(self.app, "recipe", self._show_source_fields)

    def _show_source_fields(self, recipe) -> None:
        """Show only the fields that the chosen source reads."""
        for key, sources in SOURCE_FIELDS.items():
            self.query_one(f"#field-{key.replace('.', '-')}", RecipeField).display = recipe.dataset.source in sources

    def make_probe(self):
        return launch.probe("probes:DatasetProbe", recipe=self.app.recipe, recipe_dir=self.app.recipe_dir, count=16)

    def show_result(self, summary: dict) -> None:
        info = summary["summary"]
        self.query_one("#samples", TerminalImage).image = summary["grid"]
        c, h, w = info.shape
        self.query_one("#facts", Static).update(
            f"[b]{escape(str(info.name))}[/b]: {info.size:,} images of {c}×{h}×{w}, "
            f"values {info.value_min:.2f} … {info.value_max:.2f}")
        captions = self.query_one("#captions", Static)
        captions.display = bool(info.captioned)
        if info.captioned:  # the grid's first images, left to right
            lines = [f"{i + 1}. {escape(text)}" for i, text in enumerate(info.first_captions)]
            captions.update(f"{info.captioned:,} captioned; the first images':\n" + "\n".join(lines))
        table = self.query_one("#classes", DataTable)
        table.clear(columns=True)
        table.add_columns("class", "images")
        for name, count in info.class_counts.items():
            table.add_row(name, f"{count:,}")
        if not info.class_counts:
            table.add_row("(no classes)", f"{info.size:,}")
