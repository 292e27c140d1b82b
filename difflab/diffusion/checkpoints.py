"""Checkpoints of a run: everything a resumed run needs, written atomically.

RUN/checkpoints/step_NNNNNN/ holds the weights and tensor state as safetensors, the
optimizer state for torch.load(weights_only=True), and plain counters as JSON: nothing
read back is unpickled.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difflab.errors import InputError
from difflab.files import atomic_dir
from difflab.runtime.runs import DISK_FULL, RunDir, disk_full


@dataclass
class Checkpoint:
    """Everything a resumed run needs; tensors stay tensors, counters stay plain."""

    step: int
    model: dict[str, Any]          # state_dict
    optimizer: dict[str, Any]      # optimizer.state_dict()
    tensors: dict[str, Any]        # RNG states and on-device accumulators
    counters: dict[str, Any]       # epoch, position, elapsed, epoch losses, ...


def save_checkpoint(run: RunDir, checkpoint: Checkpoint, keep: int) -> Path:
    """Write checkpoints/step_NNNNNN atomically, then prune to the newest `keep`.

    A step already saved is kept as it is (a stop right after a periodic checkpoint asks for the
    same one again). A full disk is a JobFailed saying so; the earlier checkpoints stay.
    """
    target = run.checkpoints / f"step_{checkpoint.step:06d}"
    if (target / "state.json").is_file():
        return target
    try:
        with atomic_dir(target) as tmp:
            save_file(_contiguous(checkpoint.model), tmp / "model.safetensors")
            save_file(_contiguous(checkpoint.tensors), tmp / "state.safetensors")
            torch.save(checkpoint.optimizer, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": checkpoint.step, **checkpoint.counters}))
    except (OSError, RuntimeError, SafetensorError) as error:
        needed = checkpoint_size(checkpoint)
        if _disk_full(error, run.checkpoints, needed):
            raise disk_full(run.checkpoints, f"checkpoint step {checkpoint.step}", needed, keep) from None
        raise
    for old in run.list_checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoint_size(checkpoint: Checkpoint) -> int:
    """Roughly the bytes a checkpoint takes on disk: its tensors, wherever they nest."""
    return sum(_tensor_bytes(part) for part in (checkpoint.model, checkpoint.optimizer, checkpoint.tensors))


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _disk_full(error: Exception, folder: Path, needed: int) -> bool:
    """ENOSPC or a quota, or a write error (torch says "unexpected pos" or "iostream error",
    safetensors an IoError) with hardly more room left than the checkpoint needs."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    try:
        return shutil.disk_usage(folder).free < needed + (1 << 20)  # 1 MiB for blocks and metadata
    except OSError:
        return False


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read one checkpoint folder; a missing, truncated or corrupt file is an InputError naming it."""
    current = folder
    try:
        current = folder / "state.json"
        counters = json.loads(current.read_text())
        current = folder / "model.safetensors"
        model = load_file(current)
        current = folder / "state.safetensors"
        tensors = load_file(current)
        current = folder / "optimizer.pt"
        optimizer = torch.load(current, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError, EOFError, KeyError,
            pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{current}: unreadable or truncated checkpoint file ({reason}); "
                         f"delete {folder} to resume from an earlier checkpoint") from None
    step = counters.pop("step")
    return Checkpoint(step=step, model=model, optimizer=optimizer, tensors=tensors, counters=counters)


def load_latest_checkpoint(run: RunDir) -> Checkpoint:
    """The run's newest checkpoint, or a clear InputError when none is usable."""
    return load_checkpoint(run.latest_checkpoint())


def _contiguous(tensors: dict[str, Any]) -> dict[str, Any]:
    # safetensors refuses non-contiguous or shared-memory tensors; a copy per entry avoids both.
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
