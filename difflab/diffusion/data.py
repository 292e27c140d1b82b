"""Image datasets, decoded and normalised once into one resident tensor.

Every source (scikit-learn digits, generated shapes, MNIST IDX files, a folder of
images, a Hugging Face dataset or imagefolder through `datasets`) is decoded, resized
and scaled a single time when a job starts; training batches are then index slices of
that tensor on the training device. Nothing is re-decoded or re-transformed per step:
on these 2 cores one BasicUNet step takes about 0.25 s and data loading must stay a few
percent of it, which per-item PIL decoding and transforms would not.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from sklearn.datasets import load_digits
from torchvision.datasets import MNIST, FashionMNIST

from difflab.diffusion.audio import SpectrogramCodec
from difflab.diffusion.folders import class_of_file, resolve_data_path, seeded_subset
from difflab.diffusion.hub_data import encoded_images, open_table, read_captions, read_labels
from difflab.diffusion.sounds import clip_source, load_waves
from difflab.errors import InputError
from difflab.recipe import VALUE_RANGES, AudioConfig, DatasetConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SHAPE_NAMES = ["circle", "square", "triangle"]
# ITU-R BT.601 luma, the same weights PIL's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_SUPERSAMPLE = 4  # shapes are drawn this many times larger, then downsampled for antialiasing


@dataclass
class DatasetSummary:
    """What a loaded dataset holds, for the dataset screen and run logs."""

    name: str
    size: int
    shape: tuple[int, int, int]
    value_min: float
    value_max: float
    class_counts: dict[str, int]
    captioned: int = 0  # images with a non-empty caption
    first_captions: list[str] = field(default_factory=list)  # of the first images, in order


@dataclass
class ImageDataset:
    """All images of a dataset as one (N, C, H, W) float32 tensor in `value_range`, with labels
    and, for sources that have them, one caption per image."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    value_range: tuple[float, float]
    captions: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy of this dataset with images and labels on `device` (captions stay a list)."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def summary(self, first_captions: int = 4) -> DatasetSummary:
        """Size, image shape, value range, images per class, and how many have captions."""
        labelled = self.labels[self.labels >= 0].cpu()
        counts = torch.bincount(labelled, minlength=len(self.class_names)).tolist()
        captions = self.captions or []
        return DatasetSummary(
            name=self.name, size=len(self), shape=tuple(self.images.shape[1:]),
            value_min=float(self.images.min()), value_max=float(self.images.max()),
            class_counts=dict(zip(self.class_names, counts)),
            captioned=sum(1 for c in captions if c), first_captions=captions[:first_captions])


class _Decoded(NamedTuple):
    """What a source loader returns: 0..1 float32 (N, C, H, W) images before finishing."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    captions: list[str] | None = None


def load_dataset(cfg: DatasetConfig, base_dir: Path | None = None, seed: int = 0,
                 audio: AudioConfig | None = None) -> ImageDataset:
    """Load `cfg.source` into memory; relative paths resolve against `base_dir` (the recipe's folder).

    `audio` is the recipe's [audio] section, used when the source is audio (its defaults otherwise).
    """
    if cfg.source == "audio":
        decoded = _load_audio(cfg, base_dir, seed, audio or AudioConfig())
    else:
        decoded = _LOADERS[cfg.source](cfg, base_dir, seed)
    return _finish(decoded, cfg, seed)


# ---------------------------------------------------------------- finishing


def _finish(decoded: _Decoded, cfg: DatasetConfig, seed: int) -> ImageDataset:
    """Subset, channels, size and value range: the same last steps for every source."""
    images, labels, captions = decoded.images, decoded.labels, decoded.captions
    keep = seeded_subset(len(images), cfg.limit, seed)
    if keep is not None:  # before resizing, so only the kept images are resized
        images, labels = images[keep], labels[keep]
        captions = None if captions is None else [captions[i] for i in keep.tolist()]
    images = _resize(_to_channels(images, cfg.channels), cfg.image_size)
    low, high = VALUE_RANGES[cfg.value_range]
    images = (images * (high - low) + low).to(torch.float32).contiguous()
    return ImageDataset(images, labels.to(torch.int64).contiguous(), decoded.class_names,
                        decoded.name, (low, high), captions)


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey to RGB by repetition, RGB to grey by luma."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to size x size (antialiased when shrinking), unless already that size."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)  # the antialias filter can overshoot slightly


# ---------------------------------------------------------------- sources


def _load_digits(cfg: DatasetConfig, base_dir: Path | None, seed: int) -> _Decoded:
    """scikit-learn's 1797 8x8 digits (values 0..16, ink high), shipped with the package."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    return _Decoded(images, labels, [str(d) for d in range(10)], "digits")


def _load_shapes(cfg: DatasetConfig, base_dir: Path | None, seed: int) -> _Decoded:
    """cfg.num_images generated RGB circles, squares and triangles, the same for the same seed."""
    rng = random.Random(seed)
    kinds = [rng.randrange(len(SHAPE_NAMES)) for _ in range(cfg.num_images)]
    pixels = np.stack([_draw_shape(kind, cfg.image_size, rng) for kind in kinds])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).div(255.0)
    return _Decoded(images, torch.tensor(kinds, dtype=torch.int64), list(SHAPE_NAMES), "shapes")


def _draw_shape(kind: int, size: int, rng: random.Random) -> np.ndarray:
    """One bright filled shape of random size, position and turn on a dark plain background."""
    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), _random_colour(rng, value=(0.0, 0.35)))
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.2, 0.45) * big
    centre = (rng.uniform(radius, big - radius), rng.uniform(radius, big - radius))
    fill = _random_colour(rng, value=(0.7, 1.0))
    if SHAPE_NAMES[kind] == "circle":
        draw.ellipse([centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill=fill)
    else:
        sides = 4 if SHAPE_NAMES[kind] == "square" else 3
        draw.regular_polygon((*centre, radius), sides, rotation=rng.uniform(0, 360), fill=fill)
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))


def _random_colour(rng: random.Random, value: tuple[float, float]) -> tuple[int, int, int]:
    """A random saturated colour whose brightness (HSV value) lies in `value`."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(*value))
    return tuple(round(255 * c) for c in rgb)


def _load_mnist(cfg: DatasetConfig, base_dir: Path | None, seed: int) -> _Decoded:
    """MNIST or Fashion-MNIST from IDX files under cfg.path, read whole (no per-item transform)."""
    kind = MNIST if cfg.source == "mnist" else FashionMNIST
    root = resolve_data_path(cfg, base_dir)
    raw = root / kind.__name__ / "raw"
    try:
        dataset = kind(str(root), train=cfg.split == "train", download=cfg.download)
    except RuntimeError as error:
        raise InputError(_mnist_missing(cfg, raw, error)) from None
    except (OSError, ValueError, AssertionError) as error:  # torchvision asserts on a bad IDX header
        raise InputError(f"dataset.path: cannot read the {cfg.source} IDX files in {raw}: {error}") from None
    names = [str(d) for d in range(10)] if cfg.source == "mnist" else list(dataset.classes)
    images = dataset.data.unsqueeze(1).to(torch.float32).div(255.0)
    return _Decoded(images, dataset.targets.to(torch.int64), names, cfg.source)


def _mnist_missing(cfg: DatasetConfig, raw: Path, error: RuntimeError) -> str:
    """The message for IDX files that are missing or could not be downloaded."""
    if cfg.download:
        return f"dataset.path = {cfg.path!r}: could not download {cfg.source} into {raw} (needs internet): {error}"
    return (f"dataset.path = {cfg.path!r}: no {cfg.source} files in {raw}; set dataset.download = true, "
            f"or place the raw IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) under {raw}")


def _load_folder(cfg: DatasetConfig, base_dir: Path | None, seed: int) -> _Decoded:
    """Every image under cfg.path; first-level subfolders are classes, loose images unlabelled."""
    root = resolve_data_path(cfg, base_dir)
    _check_folder(cfg, root)
    files = _image_files(root)
    if not files:
        raise InputError(f"dataset.path = {cfg.path!r}: no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    owners = [class_of_file(f, root) for f in files]
    names = sorted({owner for owner in owners if owner is not None})
    index = {name: i for i, name in enumerate(names)}
    labels = [index.get(owner, -1) for owner in owners]
    keep = seeded_subset(len(files), cfg.limit, seed)
    if keep is not None:  # choose before decoding, so a limit also saves the decoding time
        files, labels = [files[i] for i in keep.tolist()], [labels[i] for i in keep.tolist()]
    images = _decode_all([(f, str(f)) for f in files], cfg)
    return _Decoded(images, torch.tensor(labels, dtype=torch.int64), names, f"folder:{root}")


def _decode_all(sources: list[tuple[Path | IO[bytes], str]], cfg: DatasetConfig) -> torch.Tensor:
    """(image file or bytes, its name) pairs as 0..1 float32 (N, C, size, size) in cfg.channels."""
    mode = "L" if cfg.channels == 1 else "RGB"
    what = "dataset.path" if not cfg.path else f"dataset.path = {cfg.path!r}"
    pixels = np.stack([decode_image(file, cfg.image_size, mode, what, name) for file, name in sources])
    images = torch.from_numpy(pixels.reshape(len(sources), cfg.image_size, cfg.image_size, -1))
    return images.permute(0, 3, 1, 2).to(torch.float32).div(255.0)


def _check_folder(cfg: DatasetConfig, root: Path) -> None:
    """Raise InputError unless `root` is an existing folder."""
    if not root.exists():
        raise InputError(f"dataset.path = {cfg.path!r}: folder not found (resolved to {root})")
    if not root.is_dir():
        raise InputError(f"dataset.path = {cfg.path!r}: {root} is a file, not a folder of images")


def _image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in sorted order; hidden files and folders are skipped."""
    # Hidden ones are skipped because .ipynb_checkpoints and macOS ._x.png files are copies or junk.
    found = [p for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def decode_image(file: Path | IO[bytes], size: int, mode: str, what: str = "dataset.path",
                 name: str | None = None) -> np.ndarray:
    """Decode one image, upright, in `mode`, shorter side scaled to `size` and centre-cropped square.

    `what` names the setting that asked for the file, and `name` the image (default: the file),
    in the error a missing or corrupt one raises.
    """
    try:
        with Image.open(file) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            upright = ImageOps.exif_transpose(img).convert(mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise InputError(f"{what}: cannot read image {name or file}: {error}") from None
    return np.asarray(ImageOps.fit(upright, (size, size), Image.Resampling.BICUBIC))


def _load_datasets_library(cfg: DatasetConfig, base_dir: Path | None, seed: int) -> _Decoded:
    """A hub dataset, save_to_disk folder, parquet files or imagefolder: one split, its columns."""
    table = open_table(cfg, base_dir)
    labels, names = read_labels(table, cfg)
    captions = read_captions(table, cfg)
    keep = seeded_subset(len(table.rows), cfg.limit, seed)
    if keep is not None:  # choose before decoding: limit = 64 of a big dataset decodes 64 images
        keep = keep.tolist()
        labels = [labels[i] for i in keep]
        captions = None if captions is None else [captions[i] for i in keep]
    images = _decode_all(encoded_images(table, cfg, keep), cfg)
    return _Decoded(images, torch.tensor(labels, dtype=torch.int64), names, table.name, captions)


def _load_audio(cfg: DatasetConfig, base_dir: Path | None, seed: int, audio: AudioConfig) -> _Decoded:
    """Sound clips (generated, or a folder of WAV files) as 0..1 mel spectrogram images."""
    source = clip_source(cfg, audio, base_dir, seed)
    waves, labels = load_waves(source)
    images, _ = SpectrogramCodec(audio, cfg.image_size).to_images(waves)
    return _Decoded(images, labels, list(source.names), source.name)


_LOADERS = {
    "digits": _load_digits, "shapes": _load_shapes, "mnist": _load_mnist,
    "fashion-mnist": _load_mnist, "folder": _load_folder,
    "hub": _load_datasets_library, "imagefolder": _load_datasets_library,
}
