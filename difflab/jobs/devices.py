"""Which torch device a job runs on: cuda, then mps, then cpu for "auto"."""

from __future__ import annotations

from difflab.errors import InputError


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
