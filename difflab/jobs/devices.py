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
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("device = 'cuda': no CUDA device is available here (use cpu or auto)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise InputError("device = 'mps': no Apple MPS device is available here (use cpu or auto)")
    return requested


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
