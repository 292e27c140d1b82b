"""Pictures that use the space they have: a grid of samples shows as many of its images as fit
at a readable size, and any picture opens full-screen.

The engine sends grids (torchvision's make_grid: tiles on a grey padding). Drawn whole in a
small box, a 4×4 grid of 28 px digits got ~4 terminal pixels a digit: noise. So a Picture cuts
the grid back into its tiles and shows the first few that fit at MIN_TILE_PX or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Label

from .widgets import TerminalImage, cell_pixels

MIN_TILE_PX = 12  # a 28 px digit drawn smaller than this (in terminal pixels) stops being readable


@dataclass(frozen=True)
class TileLayout:
    """How many tiles are shown, in how many columns and rows, each how large (terminal pixels)."""

    count: int
    columns: int
    rows: int
    width: int
    height: int


def grid_tiles(image: Image.Image) -> list[Image.Image]:
    """The images of a make_grid grid, found by its padding; the image itself if it is no grid.

    The padding is the colour of the top-left pixel; a column (row) of padding runs through the
    whole grid. Tiles of unequal size mean that guess was wrong: then the picture stays whole.
    """
    pixels = np.asarray(image.convert("RGB"))
    is_pad = (pixels == pixels[0, 0]).all(axis=2)
    columns, rows = _spans(~is_pad.all(axis=0)), _spans(~is_pad.all(axis=1))
    if not columns or not rows or len({b - a for a, b in columns}) > 1 or len({b - a for a, b in rows}) > 1:
        return [image]
    return [image.crop((left, top, right, bottom)) for top, bottom in rows for left, right in columns
            if not is_pad[top:bottom, left:right].all()]  # make_grid leaves a short last row's slots empty


def _spans(content: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], content.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def fit_tiles(count: int, tile_w: int, tile_h: int, box_w: int, box_h: int, gap: int,
              min_px: int = MIN_TILE_PX) -> TileLayout | None:
    """The most tiles that fit the box at `min_px` or more, as large as they can be; one tile, as
    large as it can be, when not even one is that large; None for a box with no room."""
    for count_shown in range(count, 0, -1):
        best = None
        for columns in range(1, count_shown + 1):
            rows = math.ceil(count_shown / columns)
            scale = min((box_w - gap * (columns - 1)) / (columns * tile_w),
                        (box_h - gap * (rows - 1)) / (rows * tile_h))
            if scale > 0 and (best is None or scale > best[0]):
                best = (scale, columns, rows)
        if best is None:
            continue
        scale, columns, rows = best
        width, height = int(tile_w * scale), int(tile_h * scale)
        if min(width, height) >= min_px or count_shown == 1:
            return TileLayout(count_shown, columns, rows, width, height) if width and height else None
    return None


def tile_picture(tiles: list[Image.Image], layout: TileLayout, gap: int, size: tuple[int, int],
                 background: tuple[int, int, int]) -> Image.Image:
    """The first `layout.count` tiles, resized and laid out in rows, centred on an image of `size`."""
    grid_w = layout.columns * layout.width + gap * (layout.columns - 1)
    grid_h = layout.rows * layout.height + gap * (layout.rows - 1)
    picture = Image.new("RGB", size, background)
    left, top = (size[0] - grid_w) // 2, (size[1] - grid_h) // 2
    for index, tile in enumerate(tiles[:layout.count]):
        row, column = divmod(index, layout.columns)
        # nearest neighbour keeps an upscaled pixel sharp; shrinking averages (Lanczos) instead of dropping rows
        smaller = layout.width < tile.width
        resized = tile.convert("RGB").resize((layout.width, layout.height),
                                             Image.Resampling.LANCZOS if smaller else Image.Resampling.NEAREST)
        picture.paste(resized, (left + column * (layout.width + gap), top + row * (layout.height + gap)))
    return picture


class Picture(Widget):
    """A picture fitted to its box; a grid shows the first images that fit at a readable size.

    `title` names it in the full-screen viewer (`f`, or a click). `split=False` keeps a labelled
    figure (a sweep) whole: it is only scaled to the box.
    """

    DEFAULT_CSS = """
    Picture { width: 1fr; height: 1fr; align: center middle; }
    """

    class Fitted(Message):
        """The picture was laid out anew for its box (the viewer's title counts what it shows)."""

    def __init__(self, title: str = "", split: bool = True, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title, self.split = title, split
        self._image: Image.Image | None = None
        self._tiles: list[Image.Image] = []
        self._fitted: tuple | None = None  # (image, width, height) the shown picture was made for
        self.layout_shown: TileLayout | None = None
        """What is on screen now (tests read it)."""

    def compose(self) -> ComposeResult:
        yield TerminalImage()

    @property
    def tile_count(self) -> int:
        """How many images the picture holds (1 for a picture that is no grid)."""
        return len(self._tiles)

    @property
    def image(self) -> Image.Image | None:
        """The whole picture (a grid, or one image)."""
        return self._image

    @image.setter
    def image(self, image: Image.Image | None) -> None:
        self._image = image
        self._tiles = (grid_tiles(image) if self.split else [image]) if image is not None else []
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Lay the tiles out for the box as it is now (not again for the same image and size)."""
        if not self.is_mounted:
            return
        shown = self.query_one(TerminalImage)
        width, height = self.content_size
        if (self._image, width, height) == self._fitted:
            return
        self._fitted = (self._image, width, height)
        cell_w, cell_h = cell_pixels()
        first = self._tiles[0] if self._tiles else None
        layout = first and fit_tiles(len(self._tiles), first.width, first.height,
                                     width * cell_w, height * cell_h, gap=cell_w)
        self.layout_shown = layout or None
        self.post_message(self.Fitted())
        if not layout:
            shown.image = None
            return
        gap = cell_w if layout.count > 1 else 0
        cells = (math.ceil((layout.columns * layout.width + gap * (layout.columns - 1)) / cell_w),
                 math.ceil((layout.rows * layout.height + gap * (layout.rows - 1)) / cell_h))
        background = tuple(np.asarray(self._image.convert("RGB"))[0, 0].tolist()) if self.split else (0, 0, 0)
        shown.styles.width, shown.styles.height = cells
        shown.image = tile_picture(self._tiles, layout, gap, (cells[0] * cell_w, cells[1] * cell_h), background)

    def on_click(self) -> None:
        if self._image is not None:
            self.app.push_screen(PictureViewer.of(self.screen, self))


class PictureViewer(ModalScreen[None]):
    """One picture at a time over the whole terminal: ← → the others on the screen, Escape closes."""

    CSS_PATH = "picture.tcss"
    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="picture.close", tooltip="back to the screen"),
        Binding("left", "page(-1)", "Previous", id="picture.previous", tooltip="the picture before"),
        Binding("right", "page(1)", "Next", id="picture.next", tooltip="the picture after"),
    ]

    def __init__(self, pages: list[tuple[str, Image.Image, bool]], start: int = 0) -> None:
        super().__init__()
        self.pages, self.index = pages, start

    @classmethod
    def show(cls, screen, nothing_yet: str) -> None:
        """Every picture on `screen` full-screen (the `f` key), or `nothing_yet` when it shows none."""
        viewer = cls.of(screen)
        if viewer is None:
            screen.notify(nothing_yet, severity="warning")
        else:
            screen.app.push_screen(viewer)

    @classmethod
    def of(cls, screen, first: Picture | None = None) -> PictureViewer | None:
        """A viewer of every picture shown on `screen`, opened at `first` (else the first)."""
        pictures = [p for p in screen.query(Picture) if p.image is not None and p.display
                    and all(a.display for a in p.ancestors_with_self if hasattr(a, "display"))]
        if not pictures:
            return None
        start = pictures.index(first) if first in pictures else 0
        return cls([(p.title, p.image, p.split) for p in pictures], start)

    def compose(self) -> ComposeResult:
        with Vertical(id="viewer"):
            yield Label("", id="viewer-title")
            yield Picture(id="viewer-picture")
            yield Label("← → the other pictures · Escape closes", id="viewer-keys")

    def on_mount(self) -> None:
        self._show()

    def action_page(self, delta: int) -> None:
        self.index = (self.index + delta) % len(self.pages)
        self._show()

    def _show(self) -> None:
        _title, image, split = self.pages[self.index]
        picture = self.query_one("#viewer-picture", Picture)
        picture.split = split
        picture.image = image
        self.on_picture_fitted()

    def on_picture_fitted(self, event: Picture.Fitted | None = None) -> None:
        picture = self.query_one("#viewer-picture", Picture)
        shown, tiles = picture.layout_shown, picture.tile_count
        count = f" · {shown.count} of {tiles} images" if shown and tiles > 1 else ""
        title = self.pages[self.index][0]
        self.query_one("#viewer-title", Label).update(f"{title}{count}  ({self.index + 1}/{len(self.pages)})")

    def action_dismiss(self) -> None:
        self.dismiss(None)
