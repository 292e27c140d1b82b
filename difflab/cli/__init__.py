"""The `difflab` command: the lab by default, subcommands for headless work (main.py),
and the Rich reporter that turns a job's events into terminal output (report.py)."""

from difflab.cli.main import main

__all__ = ["main"]
