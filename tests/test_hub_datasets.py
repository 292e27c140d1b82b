"""Hugging Face datasets as a recipe source: a save_to_disk folder, parquet files, an imagefolder
with metadata.jsonl and a hub id from the local cache, each trained on; and the one-line errors
for a missing dataset, split or column."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from textual.widgets import DataTable, Static

from difflab.diffusion.data import load_dataset
from difflab.errors import InputError
from difflab.recipe import DatasetConfig
from difflab.screens.app import DifflabApp
from difflab.screens.widgets import RecipeField
from tests.conftest import read_losses, run_cli, tiny_args, wait_for_probe

NAMES = ["red", "green", "blue"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
COUNT = 12
# Twelve images are a few batches of 4; one epoch keeps a run to a second or two.
QUICK = ["train.batch_size=4", "train.epochs=1", "train.sample_every=0", "train.checkpoint_every=0"]


def tiny_image(i: int) -> Image.Image:
    """8x8: the left half in its class colour, the right half black (row i of the dataset)."""
    img = Image.new("RGB", (8, 8), (0, 0, 0))
    img.paste(COLOURS[i % 3], (0, 0, 4, 8))
    return img


def caption(i: int) -> str:
    return f"a {NAMES[i % 3]} square, number {i}"


@pytest.fixture(scope="module")
def table() -> Dataset:
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=NAMES), "text": Value("string")})
    return Dataset.from_dict({"image": [tiny_image(i) for i in range(COUNT)], "label": [i % 3 for i in range(COUNT)],
                              "text": [caption(i) for i in range(COUNT)]}, features=features)


@pytest.fixture(autouse=True)
def hugging_face_caches(tmp_path, monkeypatch):
    """Both Hugging Face caches in this test's folder, offline, as on a machine without internet."""
    hub_cache = tmp_path / "hf-hub"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return hub_cache


def saved_to_disk(table: Dataset, folder: Path) -> Path:
    DatasetDict({"train": table, "test": table.select(range(3))}).save_to_disk(str(folder))
    return folder


def as_parquet(table: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True)
    table.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


def as_imagefolder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i in range(COUNT):
        tiny_image(i).save(folder / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": caption(i), "colour": NAMES[i % 3]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def in_hub_cache(table: Dataset, hub_cache: Path, repo: str) -> None:
    """`repo` laid out as huggingface_hub's cache holds a downloaded dataset: blobs, a snapshot, refs/main."""
    owner, name = repo.split("/")
    root = hub_cache / f"datasets--{owner}--{name}"
    staging = hub_cache / "staging.parquet"
    table.to_parquet(str(staging))
    blob = root / "blobs" / hashlib.sha256(staging.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True)
    staging.rename(blob)
    commit = "0123456789abcdef0123456789abcdef01234567"
    file = root / "snapshots" / commit / "data" / "train-00000-of-00001.parquet"
    file.parent.mkdir(parents=True)
    file.symlink_to(os.path.relpath(blob, file.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def check_loaded(data, count: int = COUNT, captions: bool = True) -> None:
    """Shape, value range, labels and captions of the 12-image table (or its first `count` rows)."""
    assert data.images.shape == (count, 3, 8, 8)
    assert data.value_range == (-1.0, 1.0)
    assert data.images.min() == pytest.approx(-1.0) and data.images.max() == pytest.approx(1.0)
    assert data.class_names == NAMES
    assert data.labels.tolist() == [i % 3 for i in range(count)]
    for i in range(count):  # the class colour's channel is bright on the left, every channel dark on the right
        assert data.images[i, i % 3, :, :3].min() > 0.9 and data.images[i, :, :, 5:].max() < -0.9
    assert data.captions == ([caption(i) for i in range(count)] if captions else None)


def hub_config(path: Path | str, **settings) -> DatasetConfig:
    defaults = {"image_size": 8, "channels": 3, "value_range": "-1..1", "label_column": "label",
                "caption_column": "text"}
    return DatasetConfig(source="hub", path=str(path), **{**defaults, **settings})


def train_on(tmp_path: Path, dataset: dict) -> Path:
    """A tiny from-scratch run on `dataset` ([dataset] keys), through the CLI; returns the run folder."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[dataset]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in dataset.items()))
    run = tmp_path / "run"
    assert run_cli("run", recipe, "--out", run, *tiny_args(*QUICK, "dataset.channels=3")) == 0
    return run


def check_run(run: Path, name: str) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == name and summary["dataset_size"] == COUNT
    assert summary["steps"] == COUNT // 4
    assert read_losses(run) and all(math.isfinite(loss) for loss in read_losses(run))


# ---------------------------------------------------------------- the three ways to save a dataset


def test_a_save_to_disk_folder_loads_its_labels_and_captions_and_trains(table, tmp_path):
    folder = saved_to_disk(table, tmp_path / "saved")
    check_loaded(load_dataset(hub_config(folder)))
    test_split = load_dataset(hub_config(folder, split="test"))
    check_loaded(test_split, count=3)
    run = train_on(tmp_path, {"source": "hub", "path": "saved", "label_column": "label", "caption_column": "text"})
    check_run(run, f"hub:{folder}")


def test_a_single_saved_dataset_is_its_train_split(table, tmp_path):
    table.save_to_disk(str(tmp_path / "one"))
    check_loaded(load_dataset(hub_config(tmp_path / "one")))
    with pytest.raises(InputError, match=r"dataset.split = 'test': .* has no split 'test'; its splits are train$"):
        load_dataset(hub_config(tmp_path / "one", split="test"))


def test_a_folder_of_parquet_files_loads_and_trains(table, tmp_path):
    folder = as_parquet(table, tmp_path / "parquet")
    check_loaded(load_dataset(hub_config(folder)))
    check_loaded(load_dataset(hub_config(folder / "train-00000-of-00001.parquet")))  # one file works too
    run = train_on(tmp_path, {"source": "hub", "path": "parquet", "label_column": "label"})
    check_run(run, f"hub:{folder}")


def test_an_imagefolder_with_metadata_gives_captions_and_string_labels(tmp_path):
    folder = as_imagefolder(tmp_path / "pictures")
    data = load_dataset(DatasetConfig(source="imagefolder", path=str(folder), image_size=8, channels=3,
                                      value_range="-1..1", label_column="colour", caption_column="text"))
    assert data.class_names == sorted(NAMES)  # plain strings become classes in sorted order
    assert [data.class_names[i] for i in data.labels.tolist()] == [NAMES[i % 3] for i in range(COUNT)]
    assert data.captions == [caption(i) for i in range(COUNT)]
    assert data.name == f"imagefolder:{folder}"
    run = train_on(tmp_path, {"source": "imagefolder", "path": "pictures", "caption_column": "text"})
    check_run(run, f"imagefolder:{folder}")


def test_imagefolder_class_subfolders_are_its_label_column(tmp_path):
    for i in range(6):
        (tmp_path / "shapes" / NAMES[i % 3]).mkdir(parents=True, exist_ok=True)
        tiny_image(i).save(tmp_path / "shapes" / NAMES[i % 3] / f"{i}.png")
    cfg = DatasetConfig(source="imagefolder", path=str(tmp_path / "shapes"), image_size=8, label_column="label")
    data = load_dataset(cfg)
    assert data.class_names == sorted(NAMES) and sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.captions is None and data.images.shape == (6, 1, 8, 8)


# ---------------------------------------------------------------- a hub id from the local cache


def test_a_hub_id_loads_offline_from_the_hugging_face_cache(table, tmp_path, hugging_face_caches):
    in_hub_cache(table, hugging_face_caches, "someone/tiny-squares")
    check_loaded(load_dataset(hub_config("someone/tiny-squares"), base_dir=tmp_path))
    check_loaded(load_dataset(hub_config("someone/tiny-squares", split="train[:5]"), base_dir=tmp_path), count=5)
    run = train_on(tmp_path, {"source": "hub", "path": "someone/tiny-squares"})
    check_run(run, "hub:someone/tiny-squares")
    assert 'path = "someone/tiny-squares"' in (run / "recipe.toml").read_text()  # a name, not made a folder


def test_an_uncached_hub_id_offline_fails_at_once_naming_the_cache(tmp_path, hugging_face_caches, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[dataset]\nsource = "hub"\npath = "huggan/smithsonian_butterflies_subset"\n')
    started = time.monotonic()
    assert run_cli("run", recipe, "--out", tmp_path / "run") == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert ("dataset.path = 'huggan/smithsonian_butterflies_subset': no such folder "
            f"({tmp_path / 'huggan' / 'smithsonian_butterflies_subset'}) and not in the Hugging Face cache "
            f"({hugging_face_caches}); offline (HF_HUB_OFFLINE), so the hub was not asked") in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_an_uncached_hub_id_with_the_hub_unreachable_fails_at_once(tmp_path, monkeypatch):
    # Online mode, but the hub's address refuses connections: no 25 s of retries before the answer.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"not in the Hugging Face cache .*, and the hub cannot be reached "
                                         r"\(127.0.0.1: .*\); download it where there is internet"):
        load_dataset(hub_config("someone/not-cached"), base_dir=tmp_path)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- limits, splits, columns


def test_limit_picks_the_rows_before_decoding_and_keeps_their_captions(table, tmp_path):
    folder = saved_to_disk(table, tmp_path / "saved")
    data = load_dataset(hub_config(folder, limit=5), seed=3)
    assert len(data) == 5 and len(data.captions) == 5
    for image, label, text in zip(data.images, data.labels.tolist(), data.captions):
        row = int(text.rsplit(" ", 1)[1])  # "a red square, number 7": the caption names its row
        assert label == row % 3 and image[row % 3, :, :3].min() > 0.9
    assert data.summary().captioned == 5 and data.summary().first_captions == data.captions[:4]
    moved = data.to("meta")
    assert moved.captions == data.captions and moved.images.device.type == "meta"


def test_split_slices_and_sums(table, tmp_path):
    folder = saved_to_disk(table, tmp_path / "saved")
    data = load_dataset(hub_config(folder, split="train[:2]+test[-1:]"))
    assert data.captions == [caption(0), caption(1), caption(2)]


def test_grey_images_in_zero_to_one_by_luma(table, tmp_path):
    data = load_dataset(hub_config(saved_to_disk(table, tmp_path / "saved"), channels=1, value_range="0..1"))
    assert data.images.shape == (COUNT, 1, 8, 8)
    assert data.images[0, 0, 0, 0] == pytest.approx(0.299, abs=0.01)  # red through BT.601 luma
    assert data.images.min() == 0.0


def test_integer_labels_without_class_names_become_sorted_classes(tmp_path):
    plain = Dataset.from_dict({"image": [tiny_image(i) for i in range(4)], "digit": [7, 3, 7, 10]},
                              features=Features({"image": ImageFeature(), "digit": Value("int64")}))
    plain.save_to_disk(str(tmp_path / "plain"))
    data = load_dataset(hub_config(tmp_path / "plain", label_column="digit", caption_column=""))
    assert data.class_names == ["3", "7", "10"] and data.labels.tolist() == [1, 0, 1, 2]


COLUMNS = "; its columns are image, label, text"


@pytest.mark.parametrize("key,value,expected", [
    ("image_column", "img", "dataset.image_column = 'img': no such column in {where}" + COLUMNS),
    ("label_column", "class", "dataset.label_column = 'class': no such column in {where}" + COLUMNS),
    ("caption_column", "words", "dataset.caption_column = 'words': no such column in {where}" + COLUMNS),
    ("image_column", "text", "dataset.image_column = 'text': not a column of images in {where} (its type is "
                             "Value('string'))" + COLUMNS),
    ("split", "validation", "dataset.split = 'validation': {folder} has no split 'validation'; its splits are train, test"),
])
def test_a_missing_column_or_split_exits_2_with_one_line_naming_what_exists(table, tmp_path, capsys, key, value,
                                                                           expected):
    folder = saved_to_disk(table, tmp_path / "saved")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[dataset]\nsource = "hub"\npath = "saved"\n{key} = "{value}"\n')
    assert run_cli("run", recipe, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert expected.format(folder=folder, where=f"{folder} (split 'train')") in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_folder_exits_2(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[dataset]\nsource = "imagefolder"\npath = "nowhere"\n')
    assert run_cli("run", recipe, "--out", tmp_path / "run") == 2
    missing = tmp_path / "nowhere"  # the run's recipe records the path absolute
    assert f"dataset.path = '{missing}': folder not found (resolved to {missing})" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"dataset.path = './nowhere': not found \(resolved to .*\), and not a hub"):
        load_dataset(hub_config("./nowhere"), base_dir=tmp_path)
    with pytest.raises(InputError, match="source 'hub' needs a dataset"):
        load_dataset(DatasetConfig(source="hub"))


def test_a_corrupt_image_names_its_row_and_file(tmp_path):
    folder = as_imagefolder(tmp_path / "pictures")
    (folder / "05.png").write_bytes(b"not a png at all" * 8)
    with pytest.raises(InputError, match=r"cannot read image row 5 \(.*05.png\) of .*pictures \(split 'train'\)"):
        load_dataset(DatasetConfig(source="imagefolder", path=str(folder), image_size=8))


def test_a_bad_split_slice_says_how_to_write_one(table, tmp_path):
    with pytest.raises(InputError, match=r"dataset.split = 'train\[a:b\]': .*such as 'train\[:500\]'"):
        load_dataset(hub_config(saved_to_disk(table, tmp_path / "saved"), split="train[a:b]"))



# ---------------------------------------------------------------- the dataset screen


@pytest.mark.anyio
async def test_the_dataset_screen_shows_a_hub_dataset_with_its_columns_and_captions(table, tmp_path):
    folder = saved_to_disk(table, tmp_path / "saved")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)

        def shown(key: str) -> bool:
            return app.screen.query_one(f"#field-{key.replace('.', '-')}", RecipeField).display

        assert not shown("dataset.caption_column") and not shown("dataset.split")  # digits has neither
        assert not app.screen.query_one("#captions", Static).display
        choices = app.screen.query_one("#field-dataset-source", RecipeField).choices
        assert {"hub", "imagefolder", "folder", "digits"} <= set(choices)
        for key, value in (("dataset.path", str(folder)), ("dataset.label_column", "label"),
                           ("dataset.caption_column", "text"), ("dataset.channels", 3), ("dataset.source", "hub")):
            assert app.set_recipe_value(key, value) == ""
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        assert all(shown(key) for key in ("dataset.split", "dataset.image_column", "dataset.label_column",
                                          "dataset.caption_column"))
        facts = str(app.screen.query_one("#facts", Static).render())
        assert f"hub:{folder}: 12 images of 3×28×28" in facts, facts
        captions = str(app.screen.query_one("#captions", Static).render())
        assert "12 captioned" in captions and f"1. {caption(0)}" in captions and f"4. {caption(3)}" in captions
        assert app.screen.query_one("#classes", DataTable).row_count == 3
