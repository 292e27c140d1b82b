"""Hugging Face `datasets` as a source: the course's
`load_dataset("huggan/smithsonian_butterflies_subset", split="train")`, a folder written by
save_to_disk, a folder of parquet files, or an imagefolder with metadata.jsonl.

This module finds the dataset, picks the split, checks the columns and reads labels,
captions and the chosen rows' encoded images; data.py decodes those like any other source's.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from difflab.diffusion.folders import HUB_ID, resolve_data_path
from difflab.diffusion.hub import hub_unreachable
from difflab.errors import InputError, reason
from difflab.recipe import DatasetConfig

SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes into its folder


@dataclass
class Table:
    """The rows of the recipe's split, and where they came from (for messages)."""

    rows: Any  # a datasets.Dataset
    where: str  # "PATH (split 'train')"
    name: str  # the dataset's name in summaries and run logs


def open_table(cfg: DatasetConfig, base_dir: Path | None) -> Table:
    """The recipe's dataset and split as a `datasets.Dataset`, its columns checked."""
    datasets = _datasets()
    if cfg.source == "imagefolder":
        root = _existing_folder(cfg, base_dir)
        loaded = _call(lambda: datasets.load_dataset("imagefolder", data_dir=str(root)), cfg, root)
        where, name = str(root), f"imagefolder:{root}"
    else:
        loaded, where = _open_hub(cfg, base_dir)  # where: the resolved folder, or the hub name
        name = f"hub:{where}"
    rows = _pick_split(loaded, cfg, where)
    table = Table(rows, f"{where} (split {cfg.split!r})", name)
    for key in ("image_column", "label_column", "caption_column"):
        column = getattr(cfg, key)
        if column and column not in rows.column_names:
            raise InputError(f"dataset.{key} = {column!r}: no such column in {table.where}; "
                             f"its columns are {', '.join(rows.column_names)}")
    feature = rows.features[cfg.image_column]
    if not isinstance(feature, datasets.Image) and not _is_image_struct(feature):
        raise InputError(f"dataset.image_column = {cfg.image_column!r}: not a column of images in {table.where} "
                         f"(its type is {feature}); its columns are {', '.join(rows.column_names)}")
    return table


def read_labels(table: Table, cfg: DatasetConfig) -> tuple[list[int], list[str]]:
    """Each row's class index (-1: none) and the class names, from dataset.label_column.

    A ClassLabel column names its own classes; plain values become classes in sorted order.
    """
    if not cfg.label_column:
        return [-1] * len(table.rows), []
    feature = table.rows.features[cfg.label_column]
    values = list(table.rows[cfg.label_column])
    if isinstance(feature, _datasets().ClassLabel):
        return [-1 if v is None else int(v) for v in values], list(feature.names)
    try:
        present = {v for v in values if v is not None}
    except TypeError:  # lists, dicts: unhashable
        raise InputError(f"dataset.label_column = {cfg.label_column!r}: not a column of class labels in "
                         f"{table.where} (its type is {feature})") from None
    numeric = all(isinstance(v, (int, float)) for v in present)
    classes = sorted(present) if numeric else sorted(present, key=str)
    index = {value: i for i, value in enumerate(classes)}
    return [-1 if v is None else index[v] for v in values], [str(c) for c in classes]


def read_captions(table: Table, cfg: DatasetConfig) -> list[str] | None:
    """Each row's caption from dataset.caption_column ('' where missing), or None without one."""
    if not cfg.caption_column:
        return None
    captions = []
    for value in table.rows[cfg.caption_column]:
        if isinstance(value, (list, tuple)):  # several captions per image (COCO style): the first
            value = value[0] if value else None
        captions.append("" if value is None else str(value))
    return captions


def encoded_images(table: Table, cfg: DatasetConfig, keep: list[int] | None) -> list[tuple[IO[bytes] | Path, str]]:
    """The kept rows' images still encoded (bytes or a file), each with its name for errors."""
    datasets = _datasets()
    column = cfg.image_column
    indices = keep if keep is not None else range(len(table.rows))
    rows = table.rows.select(indices) if keep is not None else table.rows
    if isinstance(rows.features[column], datasets.Image):  # as bytes: decode_image decodes and names them
        rows = rows.cast_column(column, datasets.Image(decode=False))
    return [_encoded(cell, row, cfg, table) for row, cell in zip(indices, rows[column])]


def _encoded(cell: Any, row: int, cfg: DatasetConfig, table: Table) -> tuple[IO[bytes] | Path, str]:
    path = (cell or {}).get("path")
    name = f"row {row}" + (f" ({path})" if path else "") + f" of {table.where}"
    if cell and cell.get("bytes"):
        return io.BytesIO(cell["bytes"]), name
    if path:
        return Path(path), name
    raise InputError(f"dataset.image_column = {cfg.image_column!r}: {name} has no image")


def _is_image_struct(feature: Any) -> bool:
    """Parquet written without datasets' metadata keeps images as {bytes, path} structs."""
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


# ---------------------------------------------------------------- finding the dataset


def _open_hub(cfg: DatasetConfig, base_dir: Path | None) -> tuple[Any, str]:
    """(the loaded dataset, its place for messages): a local folder or file first, else a hub id."""
    if not cfg.path:
        raise InputError("dataset.path: source 'hub' needs a dataset: a hub name (owner/name), a save_to_disk "
                         "folder or a folder of parquet files, e.g. path = \"huggan/smithsonian_butterflies_subset\"")
    local = resolve_data_path(cfg, base_dir)
    if local.exists():
        return _open_local(local, cfg), str(local)
    not_found = InputError(f"dataset.path = {cfg.path!r}: not found (resolved to {local}), and not a hub "
                           f"dataset name (owner/name)")
    if not HUB_ID.fullmatch(cfg.path):
        raise not_found
    try:
        return _from_hub(cfg, local), cfg.path
    except HFValidationError:
        raise not_found from None


def _open_local(path: Path, cfg: DatasetConfig) -> Any:
    """A save_to_disk folder, a parquet file, or any folder of data files `datasets` can read."""
    datasets = _datasets()
    if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
        return _call(lambda: datasets.load_from_disk(str(path)), cfg, path)
    if path.is_file() and path.suffix == ".parquet":
        return _call(lambda: datasets.load_dataset("parquet", data_files=str(path)), cfg, path)
    if path.is_dir():  # parquet files, or a hub snapshot: its README's configs name the files
        return _call(lambda: datasets.load_dataset(str(path)), cfg, path)
    raise InputError(f"dataset.path = {cfg.path!r}: {path} is a file, not a parquet file or a dataset folder")


def _from_hub(cfg: DatasetConfig, local: Path) -> Any:
    """A hub dataset from the local Hugging Face cache, else (online) from the hub itself."""
    datasets = _datasets()
    try:  # the hub cache (datasets--owner--name), filled by snapshot_download or `hf download`
        folder = snapshot_download(cfg.path, repo_type="dataset", local_files_only=True)
        return _open_local(Path(folder), cfg)
    except LocalEntryNotFoundError:
        pass
    missing = (f"dataset.path = {cfg.path!r}: no such folder ({local}) and not in the Hugging Face cache "
               f"({constants.HF_HUB_CACHE})")
    offline = datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE
    unreachable = None if offline else hub_unreachable(datasets.config.HF_ENDPOINT)
    if unreachable:  # without this, huggingface_hub retries for ~25 s before giving up
        raise InputError(f"{missing}, and the hub cannot be reached ({unreachable}); download it where there "
                         f"is internet (hf download --repo-type dataset {cfg.path}) and copy the cache here")
    try:  # offline this only looks in datasets' own cache of prepared datasets
        return datasets.load_dataset(cfg.path)
    except ConnectionError:
        raise InputError(f"{missing}; offline (HF_HUB_OFFLINE), so the hub was not asked. Download it where "
                         f"there is internet (hf download --repo-type dataset {cfg.path}), or save it with "
                         f"save_to_disk and set dataset.path to that folder") from None
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError, OSError) as error:
        raise InputError(f"{missing}, and the hub could not give it: {reason(error)}") from None


def _existing_folder(cfg: DatasetConfig, base_dir: Path | None) -> Path:
    root = resolve_data_path(cfg, base_dir)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "folder not found"
        raise InputError(f"dataset.path = {cfg.path!r}: {what} (resolved to {root})")
    return root


def _call(load, cfg: DatasetConfig, path: Path) -> Any:
    """Run a `datasets` loader; what it raises about the files becomes one line naming the path."""
    datasets = _datasets()
    try:
        return load()
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        raise InputError(f"dataset.path = {cfg.path!r}: cannot load {path} with the datasets library: "
                         f"{reason(error)}") from None


def _pick_split(loaded: Any, cfg: DatasetConfig, where: str) -> Any:
    """The rows dataset.split names: a split, a slice of one ('train[:500]', 'train[10%:]'), or a sum."""
    datasets = _datasets()
    if isinstance(loaded, datasets.DatasetDict):
        splits = dict(loaded)
    else:  # a single Dataset saved with save_to_disk
        splits = {str(loaded.split or "train"): loaded}
    for part in re.split(r"\s*\+\s*", cfg.split.strip()):
        name = re.split(r"[\[(]", part, maxsplit=1)[0]
        if name not in splits:
            raise InputError(f"dataset.split = {cfg.split!r}: {where} has no split {name!r}; "
                             f"its splits are {', '.join(splits)}")
    try:
        spans = datasets.ReadInstruction.from_spec(cfg.split).to_absolute({n: len(s) for n, s in splits.items()})
    except (ValueError, AssertionError) as error:
        raise InputError(f"dataset.split = {cfg.split!r}: {reason(error)} (write a split name, or a slice of "
                         f"one such as 'train[:500]' or 'train[10%:]')") from None
    pieces = [splits[s.splitname].select(range(s.from_, s.to)) for s in spans]
    rows = pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)
    if len(rows) == 0:
        raise InputError(f"dataset.split = {cfg.split!r}: no rows in {where}")
    return rows


def _datasets():
    """The `datasets` library, quiet: its progress bars would draw over the lab's screens."""
    import datasets  # here, not at the top: ~1.3 s that only the hub and imagefolder sources need

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets
