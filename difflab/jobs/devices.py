"""Which torch device a job runs on (cuda, then mps, then cpu for "auto"), and the probe that
names it for the lab's status line. The bridge imports this module on the UI thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from difflab.errors import InputError
from difflab.runtime.worker import JobContext


def resolve_device(requested: str = "auto") -> str:
    """cuda, then mps, then cpu for "auto"; a requested device that is absent is bad input."""
    import torch  # on the worker thread: keeps torch off `difflab --help` and the lab's first frame

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if requested not in present_devices():
        name = {"cuda": "CUDA", "mps": "Apple MPS"}.get(requested, requested)
        raise InputError(f"device = '{requested}': no {name} device is available here; "
                         f"devices here: {', '.join(present_devices())} (or auto)")
    return requested


def present_devices() -> list[str]:
    """The devices this machine has, as a recipe names them."""
    import torch  # on the worker (see resolve_device)

    return ["cpu", *(["cuda"] if torch.cuda.is_available() else []),
            *(["mps"] if torch.backends.mps.is_available() else [])]


def check_precision(mixed_precision: str, device: str) -> None:
    """fp16 autocast needs a GPU's half-precision units (on the CPU it crawls); bf16 runs anywhere."""
    if mixed_precision == "fp16" and not device.startswith("cuda"):
        raise InputError(f"train.mixed_precision = 'fp16' needs CUDA and this job runs on {device}; "
                         f"use 'bf16' (any device) or 'no'")


@dataclass
class DeviceProbe:
    """Which device the worker owns, by name (imports torch on the worker, not the UI)."""

    name: str = "device"
    device: str = "auto"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        import torch  # on the worker (see resolve_device)

        label = ctx.device
        if ctx.device.startswith("cuda"):
            label = f"cuda: {torch.cuda.get_device_name(0)}"
        return "finished", {"device": ctx.device, "label": label}
