"""Where a dataset's files are: its path resolved against the recipe's folder, the class
each file's subfolder names, and the seeded subset that dataset.limit keeps."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from difflab.errors import InputError
from difflab.recipe import DatasetConfig


def resolve_data_path(cfg: DatasetConfig, base_dir: Path | None) -> Path:
    """cfg.path as an absolute path: `~` expanded, relative to `base_dir` (else the working folder)."""
    if not cfg.path:
        raise InputError(f"dataset.path: source {cfg.source!r} needs a root folder "
                         f"({ROOT_HINTS[cfg.source]}), e.g. path = \"data\"")
    path = Path(cfg.path).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    try:
        return path.resolve()
    except (RuntimeError, OSError) as error:  # Python 3.11 reports a symlink loop as a RuntimeError
        raise InputError(f"dataset.path = {cfg.path!r}: cannot follow {path} ({error})") from None


def recorded_data_path(cfg: DatasetConfig, base_dir: Path | None) -> str:
    """dataset.path as a run's recipe.toml records it, to replay from anywhere: absolute, except
    a hub dataset name (source hub) that names no local folder, which stays a name."""
    local = resolve_data_path(cfg, base_dir)
    if cfg.source == "hub" and not local.exists() and HUB_ID.fullmatch(cfg.path):
        return cfg.path
    return str(local)


# owner/name, or an old canonical name like "mnist" (huggingface_hub checks the finer rules)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

ROOT_HINTS = {
    "mnist": "the folder holding MNIST/raw", "fashion-mnist": "the folder holding FashionMNIST/raw",
    "folder": "a folder of images", "imagefolder": "a folder in the imagefolder layout",
}


def class_of_file(file: Path, root: Path) -> str | None:
    """The first-level subfolder holding `file`, or None for an image directly in `root`."""
    parts = file.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def seeded_subset(n: int, limit: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded random `limit` of `n` items, or None to keep all."""
    if not 0 < limit < n:
        return None
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return chosen.sort().values  # sorted, so the dataset keeps its own order
