"""Versions of what a run used, for summary.json (imported on the worker only)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def versions() -> dict[str, str]:
    """Python and the libraries that shape a run's numbers."""
    found = {"python": platform.python_version()}
    for name in ("difflab", "torch", "diffusers", "torchvision"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
