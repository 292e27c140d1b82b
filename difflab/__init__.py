"""difflab: a terminal lab for diffusion models."""

__version__ = "0.1.0"
