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


def chosen_device(parser, requested: str, threads: int) -> str:
    """The device a benchmark's --device names (a parser error when it is not here), with torch's
    intra-op threads set from --threads (0: torch's own choice)."""
    import torch

    from difflab.errors import InputError
    from difflab.jobs.devices import resolve_device

    try:
        device = resolve_device(requested)
    except InputError as error:
        parser.error(f"--device {requested}: {error}")
    if threads:
        torch.set_num_threads(threads)
    return device
