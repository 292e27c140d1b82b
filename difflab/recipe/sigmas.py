"""A DDPM training schedule's largest noise level, in plain Python (no torch, no diffusers).

The recipe check needs sigma_max = sqrt((1 - alpha_bar_T) / alpha_bar_T) to refuse a sampler
before training, and it runs on the UI thread at every field edit, where importing diffusers
would take seconds. So the betas are rebuilt here as diffusers' DDPMScheduler builds them
(diffusers 0.42, scheduling_ddpm.py), float32 rounding included; a test holds the result
against the real scheduler's.
"""

from __future__ import annotations

import math
from array import array
from functools import lru_cache


def training_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float
                   ) -> list[float]:
    """DDPMScheduler's betas for these settings, each rounded to float32 as it stores them."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return _float32(_linspace(beta_start, beta_end, n))
    if beta_schedule == "scaled_linear":
        return _float32([b * b for b in _float32(_linspace(beta_start**0.5, beta_end**0.5, n))])
    if beta_schedule == "squaredcos_cap_v2":
        return _float32(_cosine_betas(n))
    if beta_schedule == "sigmoid":
        ramp = _float32([1 / (1 + math.exp(-x)) for x in _float32(_linspace(-6.0, 6.0, n))])
        return _float32([r * (beta_end - beta_start) + beta_start for r in ramp])
    raise ValueError(f"beta_schedule {beta_schedule!r}: expected linear, scaled_linear, squaredcos_cap_v2 or sigmoid")


@lru_cache(maxsize=64)  # the recipe check repeats it at every field edit of the same schedule
def training_sigma_max(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> float:
    """sqrt((1 - alpha_bar) / alpha_bar) at the last timestep: where the Euler-type samplers start.

    alpha_bar is the cumulative product of the float32 alphas, taken in float64 and rounded to
    float32 (torch's cumprod on the CPU); infinite where it underflows to 0.
    """
    alpha_bar = 1.0
    for alpha in _float32([1.0 - beta for beta in training_betas(beta_schedule, num_train_timesteps, beta_start,
                                                                 beta_end)]):
        alpha_bar *= alpha
    alpha_bar = _float32([alpha_bar])[0]
    return math.sqrt((1 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf


def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    """diffusers' betas_for_alpha_bar (the Glide cosine schedule), each beta capped at max_beta."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]


def _linspace(start: float, end: float, n: int) -> list[float]:
    """torch.linspace's values, exact before its float32 rounding (torch's own differ by an ulp at most)."""
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def _float32(values: list[float]) -> list[float]:
    return array("f", values).tolist()
