"""What the benchmarks ran on, for the first line of their output."""

from __future__ import annotations

import platform
from pathlib import Path


def device_name(device: str) -> str:
    """The GPU's name for cuda, else the CPU model from /proc/cpuinfo."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
