"""Tensors → PIL grids → terminal output.

Grids are built with torchvision's make_grid; terminal images with climage
(unicode half blocks, so one text row shows two pixel rows).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import climage
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from difflab.files import atomic_write_bytes


def to_unit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Map images from `value_range` to 0..1, clamped (for saving and showing them)."""
    low, high = value_range
    return ((x - low) / (high - low)).clamp(0.0, 1.0)


def image_grid(images: torch.Tensor, value_range: tuple[float, float], nrow: int | None = None,
               scale: int = 1) -> Image.Image:
    """A grid of images (N, C, H, W) in `value_range` as one PIL image, optionally upscaled."""
    images = to_unit(images.detach().float().cpu(), value_range)
    nrow = nrow or max(1, round(len(images) ** 0.5))
    grid = to_pil_image(make_grid(images, nrow=nrow, padding=2, pad_value=0.5))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid


def trajectory_figure(inputs: list[torch.Tensor], predictions: list[torch.Tensor],
                      value_range: tuple[float, float], scale: int = 2) -> Image.Image:
    """The course's step-by-step figure: one row per step, model input x_t | predicted x0."""
    rows = [(image_grid(x, value_range, nrow=len(x), scale=scale),
             image_grid(p, value_range, nrow=len(p), scale=scale)) for x, p in zip(inputs, predictions)]
    cell_w, cell_h = rows[0][0].size
    label_w, header_h, gap = 56, 16, 8
    figure = Image.new("RGB", (label_w + 2 * cell_w + gap, header_h + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((label_w, 2), "model input x_t", fill="black")
    draw.text((label_w + cell_w + gap, 2), "prediction of x0", fill="black")
    for i, (left, right) in enumerate(rows):
        top = header_h + i * cell_h
        draw.text((4, top + cell_h // 2 - 5), f"step {i}", fill="black")
        figure.paste(left.convert("RGB"), (label_w, top))
        figure.paste(right.convert("RGB"), (label_w + cell_w + gap, top))
    return figure


def labelled_rows(rows: list[torch.Tensor], labels: list[str], value_range: tuple[float, float],
                  title: str = "", scale: int = 2) -> Image.Image:
    """One row of images per entry, its label on the left and a title on top (an XYZ-plot grid)."""
    grids = [image_grid(r, value_range, nrow=len(r), scale=scale) for r in rows]
    cell_w, cell_h = max(g.width for g in grids), max(g.height for g in grids)
    label_w = 8 + 6 * max(len(label) for label in labels)  # PIL's default bitmap font is ~6 px a character
    header_h = 16 if title else 0
    figure = Image.new("RGB", (max(label_w + cell_w, 6 * len(title) + 8), header_h + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(figure)
    if title:
        draw.text((4, 2), title, fill="black")
    for i, (label, grid) in enumerate(zip(labels, grids)):
        top = header_h + i * cell_h
        draw.text((4, top + cell_h // 2 - 5), label, fill="black")
        figure.paste(grid.convert("RGB"), (label_w, top))
    return figure


def latent_channels(latents: torch.Tensor, spread: float = 3.0) -> torch.Tensor:
    """Each channel of (N, C, h, w) latents as its own grey image, (N, C, 1, h, w) in 0..1: scaled
    latents (unit variance) from -spread..spread, so every channel reads on the same scale."""
    x = latents.detach().float().cpu()
    return ((x + spread) / (2 * spread)).clamp(0, 1).unsqueeze(2)


def latent_figure(images: torch.Tensor, latents: torch.Tensor, value_range: tuple[float, float],
                  decoded: torch.Tensor | None = None, scale: int = 4) -> Image.Image:
    """One row per image: the image, each latent channel as a grey picture (its own grey scale:
    -3..3 std), and, given, the image decoded back from the latent; the latents are upscaled to
    the image's size so a cell of the latent sits beside the pixels it encodes."""
    channels = latent_channels(latents)
    size = images.shape[-1]
    rows = []
    for i in range(len(images)):
        tiles = [to_unit(images[i:i + 1].float().cpu(), value_range).expand(1, 3, -1, -1)]
        grey = torch.nn.functional.interpolate(channels[i], size=(size, size), mode="nearest")
        tiles += list(grey.expand(-1, 3, -1, -1).split(1))
        if decoded is not None:
            tiles.append(to_unit(decoded[i:i + 1].float().cpu(), value_range).expand(1, 3, -1, -1))
        rows.append(torch.cat(tiles))
    grid = torch.cat(rows)
    columns = len(rows[0])
    picture = to_pil_image(make_grid(grid, nrow=columns, padding=2, pad_value=1.0))
    picture = picture.resize((picture.width * scale // 2, picture.height * scale // 2), Image.Resampling.NEAREST)
    header = Image.new("RGB", (picture.width, 14), "white")
    draw = ImageDraw.Draw(header)
    cell = picture.width / columns
    names = ["image", *(f"z{c}" for c in range(latents.shape[1])), *(["back"] if decoded is not None else [])]
    for c, name in enumerate(names):
        draw.text((int(c * cell) + 3, 1), name, fill="black")
    figure = Image.new("RGB", (picture.width, picture.height + 14), "white")
    figure.paste(header, (0, 0))
    figure.paste(picture, (0, 14))
    return figure


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically (a crash never leaves half an image)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def terminal_image(image: Image.Image, width: int = 64, truecolor: bool | None = None) -> str:
    """ANSI text that draws `image` `width` cells wide (truecolor when the terminal says so)."""
    if truecolor is None:
        truecolor = os.environ.get("COLORTERM", "") in ("truecolor", "24bit")
    return climage.convert_pil(image.convert("RGB"), is_unicode=True, is_truecolor=truecolor,
                               is_256color=not truecolor, width=min(width, image.width))
