"""Loading datasets the way a recipe asks for them: digits, shapes, MNIST IDX roots, image folders."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import FashionMNIST

from difflab.diffusion.data import ImageDataset, load_dataset
from difflab.diffusion.render import to_unit
from difflab.errors import InputError
from difflab.recipe import DatasetConfig
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset(DatasetConfig(source="digits"))


# ---------------------------------------------------------------- digits


def test_digits_are_28px_grey_in_0_to_1_with_ten_classes(digits):
    assert digits.images.shape == (1797, 1, 28, 28)
    assert digits.images.dtype == torch.float32 and digits.images.is_contiguous()
    assert digits.images.min() == 0.0 and digits.images.max() > 0.95
    assert digits.labels.dtype == torch.int64
    assert sorted(digits.labels.unique().tolist()) == list(range(10))
    assert digits.class_names == [str(d) for d in range(10)]
    assert len(digits) == 1797 and digits.value_range == (0.0, 1.0)


def test_digits_ink_is_bright_on_a_dark_background(digits):
    left_column = digits.images[..., :, 0]
    assert left_column.mean() < 0.01 and digits.images.mean() < 0.5


def test_digits_resize_to_32px():
    data = load_dataset(DatasetConfig(source="digits", image_size=32))
    assert data.images.shape == (1797, 1, 32, 32)


def test_digits_in_minus_one_to_one():
    data = load_dataset(DatasetConfig(source="digits", value_range="-1..1"))
    assert data.value_range == (-1.0, 1.0)
    assert data.images.min() == pytest.approx(-1.0)
    assert data.images.max() == pytest.approx(1.0, abs=0.05)


def test_digits_as_rgb_repeat_the_grey_channel(digits):
    data = load_dataset(DatasetConfig(source="digits", channels=3))
    assert data.images.shape == (1797, 3, 28, 28)
    assert torch.equal(data.images[:, 0], data.images[:, 1])
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    assert torch.equal(data.images[:, :1], digits.images)


def test_limit_takes_the_same_seeded_subset_in_dataset_order(digits):
    cfg = DatasetConfig(source="digits", limit=100)
    first, again = load_dataset(cfg, seed=7), load_dataset(cfg, seed=7)
    assert len(first) == 100 and torch.equal(first.images, again.images)
    assert not torch.equal(first.images, load_dataset(cfg, seed=8).images)
    distances = torch.cdist(first.images.flatten(1), digits.images.flatten(1),
                            compute_mode="donot_use_mm_for_euclid_dist")
    distance, where = distances.min(dim=1)
    assert torch.all(distance == 0)
    assert torch.all(where.diff() > 0)  # a subset, in the dataset's own order
    assert torch.equal(first.labels, digits.labels[where])


def test_limit_above_size_keeps_everything(digits):
    data = load_dataset(DatasetConfig(source="digits", limit=5000))
    assert torch.equal(data.images, digits.images)


# ---------------------------------------------------------------- shapes


def test_shapes_are_rgb_with_three_classes():
    data = load_dataset(DatasetConfig(source="shapes", channels=3, image_size=32, num_images=60))
    assert data.images.shape == (60, 3, 32, 32)
    assert data.class_names == ["circle", "square", "triangle"]
    assert sorted(data.labels.unique().tolist()) == [0, 1, 2]
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert not torch.equal(data.images[:, 0], data.images[:, 1])  # colour, not grey


def test_shapes_follow_the_seed():
    cfg = DatasetConfig(source="shapes", channels=3, num_images=20)
    first, again, other = (load_dataset(cfg, seed=s) for s in (1, 1, 2))
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)


def test_shapes_in_grey_use_luma():
    rgb = load_dataset(DatasetConfig(source="shapes", channels=3, num_images=5))
    grey = load_dataset(DatasetConfig(source="shapes", channels=1, num_images=5))
    luma = 0.299 * rgb.images[:, 0] + 0.587 * rgb.images[:, 1] + 0.114 * rgb.images[:, 2]
    assert grey.images.shape == (5, 1, 28, 28)
    assert torch.allclose(grey.images[:, 0], luma, atol=1e-6)


# ---------------------------------------------------------------- mnist / fashion-mnist


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """A raw IDX file: big-endian magic, one big-endian size per dimension, then uint8 data."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_idx_root(root: Path, folder: str, train: int = 20, test: int = 10) -> Path:
    """ROOT/<folder>/raw with train and test splits; image i is filled with value i, label i % 10."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = np.broadcast_to(np.arange(n).reshape(n, 1, 1), (n, 28, 28)).copy()
        images[0, 0, 0] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return root


def test_mnist_reads_a_local_idx_root(tmp_path):
    root = make_idx_root(tmp_path / "data", "MNIST")
    data = load_dataset(DatasetConfig(source="mnist", path=str(root)))
    assert data.images.shape == (20, 1, 28, 28) and data.name == "mnist"
    assert data.labels.tolist() == [i % 10 for i in range(20)]
    assert data.class_names == [str(d) for d in range(10)]
    assert data.images[0, 0, 0, 0] == 1.0  # pixel 255
    assert data.images[5, 0, 3, 4] == pytest.approx(5 / 255)


def test_mnist_test_split(tmp_path):
    root = make_idx_root(tmp_path, "MNIST")
    data = load_dataset(DatasetConfig(source="mnist", path=str(root), split="test"))
    assert len(data) == 10


def test_fashion_mnist_has_torchvision_class_names(tmp_path):
    root = make_idx_root(tmp_path, "FashionMNIST")
    data = load_dataset(DatasetConfig(source="fashion-mnist", path=str(root), value_range="-1..1"))
    assert data.class_names == list(FashionMNIST.classes)
    assert len(data) == 20 and data.images.max() == 1.0 and data.images.min() == -1.0


def test_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(InputError, match="dataset.download = true") as caught:
        load_dataset(DatasetConfig(source="mnist", path=str(tmp_path)))
    assert str(tmp_path / "MNIST" / "raw") in str(caught.value)


def test_mnist_without_a_path_asks_for_a_root():
    with pytest.raises(InputError, match="dataset.path: .*needs a root folder"):
        load_dataset(DatasetConfig(source="mnist"))


# ---------------------------------------------------------------- folder


def save_image(path: Path, colour, size=(40, 40), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def test_flat_folder_of_png_and_jpeg_is_unlabelled(tmp_path):
    save_image(tmp_path / "a.png", (255, 255, 255))
    save_image(tmp_path / "b.JPG", (0, 0, 0), fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(DatasetConfig(source="folder", path=str(tmp_path), channels=3, image_size=16))
    assert data.images.shape == (2, 3, 16, 16)
    assert data.labels.tolist() == [-1, -1] and data.class_names == []
    assert data.images[0].min() > 0.99 and data.images[1].max() < 0.01  # sorted: a.png, then b.JPG
    assert data.name == f"folder:{tmp_path.resolve()}"
    assert data.summary().class_counts == {}


def test_subfolders_are_classes(tmp_path):
    for name in ("cats/1.png", "cats/2.png", "dogs/deep/1.png", "loose.png"):
        save_image(tmp_path / name, (128, 128, 128))
    (tmp_path / "empty").mkdir()
    data = load_dataset(DatasetConfig(source="folder", path=str(tmp_path), image_size=8))
    assert data.class_names == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 1, -1]
    assert data.summary().class_counts == {"cats": 2, "dogs": 1}


def test_folder_in_grey_uses_luma(tmp_path):
    save_image(tmp_path / "red.png", (255, 0, 0))
    data = load_dataset(DatasetConfig(source="folder", path=str(tmp_path), channels=1, image_size=8))
    assert data.images.shape == (1, 1, 8, 8)
    assert data.images.mean() == pytest.approx(0.299, abs=0.01)


def test_wide_image_is_centre_cropped_to_a_square(tmp_path):
    wide = Image.new("L", (60, 30), 0)
    wide.paste(255, (15, 0, 45, 30))  # the centre square is white, the sides black
    wide.save(tmp_path / "wide.png")
    data = load_dataset(DatasetConfig(source="folder", path=str(tmp_path), image_size=16))
    assert data.images.shape == (1, 1, 16, 16)
    assert data.images[..., 2:-2].min() > 0.95  # squashing instead of cropping would keep the black sides
    assert data.images.mean() > 0.9


def test_relative_folder_resolves_against_the_recipe_folder(tmp_path):
    save_image(tmp_path / "recipes" / "pics" / "a.png", (10, 20, 30))
    data = load_dataset(DatasetConfig(source="folder", path="pics"), base_dir=tmp_path / "recipes")
    assert len(data) == 1


def test_missing_folder_names_the_resolved_path(tmp_path):
    with pytest.raises(InputError, match="folder not found") as caught:
        load_dataset(DatasetConfig(source="folder", path="nowhere"), base_dir=tmp_path)
    assert str(tmp_path / "nowhere") in str(caught.value)


def test_a_file_is_not_a_folder(tmp_path):
    image = save_image(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(InputError, match="not a folder"):
        load_dataset(DatasetConfig(source="folder", path=str(image)))


def test_empty_folder_lists_the_image_types(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(InputError, match=r"no images \(.png, .jpg.*found in"):
        load_dataset(DatasetConfig(source="folder", path=str(tmp_path)))


def test_corrupt_image_is_named(tmp_path):
    save_image(tmp_path / "good.png", (0, 0, 0))
    (tmp_path / "bad.png").write_bytes(b"this is not a png" * 10)
    with pytest.raises(InputError, match="cannot read image .*bad.png"):
        load_dataset(DatasetConfig(source="folder", path=str(tmp_path)))


def test_truncated_png_is_named(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    whole = buffer.getvalue()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cannot read image .*half.png"):
        load_dataset(DatasetConfig(source="folder", path=str(tmp_path)))


def test_folder_without_a_path_asks_for_one():
    with pytest.raises(InputError, match="dataset.path: .*needs a root folder"):
        load_dataset(DatasetConfig(source="folder"))


# ---------------------------------------------------------------- summary and helpers


def test_summary_describes_the_dataset(digits):
    summary = digits.summary()
    assert summary.name == "digits" and summary.size == 1797 and summary.shape == (1, 28, 28)
    assert summary.value_min == 0.0 and summary.value_max == pytest.approx(digits.images.max().item())
    assert list(summary.class_counts) == [str(d) for d in range(10)]
    assert sum(summary.class_counts.values()) == 1797
    assert summary.class_counts["0"] == int((digits.labels == 0).sum())
    assert digits.captions is None and summary.captioned == 0 and summary.first_captions == []


def test_to_moves_images_and_labels(digits):
    moved = digits.to("meta")
    assert moved.images.device.type == "meta" and moved.labels.device.type == "meta"
    assert digits.images.device.type == "cpu"  # the original stays where it was


def test_to_unit_maps_minus_one_to_one_back():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert to_unit(x, (-1.0, 1.0)).tolist() == [0.0, 0.5, 1.0, 1.0]
    assert torch.equal(to_unit(x, (0.0, 1.0)), x.clamp(0, 1))


def test_a_symlink_loop_as_the_dataset_path_is_bad_input_not_a_traceback(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InputError, match=r"dataset.path = 'a': cannot follow .*Symlink loop"):
        load_dataset(DatasetConfig(source="folder", path="a"), tmp_path)
    recipe = tmp_path / "loop.toml"
    recipe.write_text('[dataset]\nsource = "folder"\npath = "a"\n')
    assert run_cli("run", recipe, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "dataset.path = 'a': cannot follow" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
