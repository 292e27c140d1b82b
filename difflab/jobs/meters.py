"""What a training session counts: the counters a checkpoint saves, and loss meters that sum
on the device and are read back only at log intervals and epoch ends (so a CUDA run never
waits on the host each step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TrainingState:
    """Where training stands: counters that a checkpoint saves and a resume restores."""

    step: int = 0
    elapsed: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)
    last_loss: float | None = None  # the last logged loss (summary's final_loss)


@dataclass
class LossMeter:
    """Sums of per-step losses kept on the device; read back only when asked."""

    log_sum: torch.Tensor
    log_count: int
    epoch_sum: torch.Tensor
    epoch_count: int

    @classmethod
    def zeros(cls, device: str) -> LossMeter:
        return cls(torch.zeros((), device=device), 0, torch.zeros((), device=device), 0)

    def add(self, loss: torch.Tensor) -> None:
        self.log_sum += loss.detach()
        self.epoch_sum += loss.detach()
        self.log_count += 1
        self.epoch_count += 1

    def take_log_mean(self, reduce=lambda t: t) -> float:
        """The mean since the last log line (`reduce` averages it over processes); starts afresh."""
        mean = reduce(self.log_sum / max(self.log_count, 1)).item()  # the one host sync per log interval
        self.log_sum.zero_()
        self.log_count = 0
        return mean

    def take_epoch_mean(self, reduce=lambda t: t) -> float:
        """The mean since the epoch began; starts afresh."""
        mean = reduce(self.epoch_sum / max(self.epoch_count, 1)).item()
        self.epoch_sum.zero_()
        self.epoch_count = 0
        return mean


class PartsMeter:
    """Sums of a loss's terms per micro-batch (a VAE's reconstruction and KL) kept on the device;
    read back together, in one host sync, at log intervals."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for name, value in parts.items():
            if name in self.sums:
                self.sums[name] += value.detach().float()
            else:
                self.sums[name] = value.detach().float().clone()
        self.count += 1

    def take(self, reduce=lambda t: t) -> dict[str, float]:
        """Each term's mean since the last call (`reduce` averages over processes); {} when none came."""
        if not self.count:
            return {}
        names = list(self.sums)
        means = reduce(torch.stack([self.sums[name] for name in names]) / self.count).tolist()
        for total in self.sums.values():
            total.zero_()
        self.count = 0
        return dict(zip(names, means))


class NoiseLevelMeter:
    """Per-image losses summed into noise-level buckets on the device; read at log intervals."""

    BUCKETS = 10

    def __init__(self, device: str) -> None:
        self.sums = torch.zeros(self.BUCKETS, device=device)
        self.counts = torch.zeros(self.BUCKETS, device=device)

    @property
    def edges(self) -> tuple[float, ...]:
        """The buckets' bounds on the noise level, 0 to 1."""
        return tuple(i / self.BUCKETS for i in range(self.BUCKETS + 1))

    def add(self, per_image: torch.Tensor, level: torch.Tensor) -> None:
        index = (level * self.BUCKETS).long().clamp(0, self.BUCKETS - 1)
        self.sums.index_add_(0, index, per_image.float())
        self.counts.index_add_(0, index, torch.ones_like(per_image, dtype=torch.float))

    def take(self) -> tuple[float | None, ...]:
        """Each bucket's mean loss since the last call (None for a bucket that saw no image)."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        self.sums.zero_()
        self.counts.zero_()
        return tuple(s / c if c else None for s, c in zip(sums, counts))


class DivergenceWatch:
    """The first step whose loss was not finite, kept on the device: each step adds a
    comparison to the queue and nothing waits on the host until someone asks."""

    def __init__(self, device: str) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss: torch.Tensor, step: int) -> None:
        unseen_bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(unseen_bad, step, self.first_bad))

    def first_bad_step(self) -> int | None:
        """The step, or None while every loss was finite (one host sync)."""
        step = int(self.first_bad)
        return None if step < 0 else step
