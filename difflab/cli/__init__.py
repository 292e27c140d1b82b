"""The `difflab` command."""

from difflab.cli.main import main

__all__ = ["main"]
