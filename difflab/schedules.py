"""Corruption processes: how a clean image becomes a noisy one for training.

The from-scratch chapter's toy process mixes the image linearly with uniform
noise: amount 0 leaves the image, amount 1 gives pure noise.
"""

from __future__ import annotations

import torch


def corrupt(x: torch.Tensor, amount: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The course's toy corruption: x*(1-amount) + noise*amount, one amount per image."""
    if noise is None:
        noise = torch.rand_like(x)  # the course uses uniform noise in 0..1, not Gaussian
    amount = amount.view(-1, *([1] * (x.dim() - 1)))
    return x * (1 - amount) + noise * amount


def random_amounts(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """One corruption amount per image, uniform in 0..1."""
    return torch.rand(batch, generator=generator, device=device)
