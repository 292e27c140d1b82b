"""The typed events a job emits. The TUI and the headless runner consume the same ones.

Jobs never emit one event per optimizer step: progress is throttled at the source
(at most ~10 per second) and losses come at log intervals, so a consumer can never
fall behind a fast job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base of all events; `job_id` says which job sent it."""

    job_id: int


@dataclass(frozen=True)
class JobStarted(Event):
    """A job began on the worker: what it is, where it runs and how many steps it plans.

    Training jobs also say how many parameters the model has and how many of them train
    (fewer with LoRA); 0 when the job has no model to train.
    """

    name: str
    device: str
    total_steps: int
    start_step: int = 0
    run_dir: Path | None = None
    parameters: int = 0
    trainable_parameters: int = 0


@dataclass(frozen=True)
class Progress(Event):
    """Throttled progress: the step reached and the last loss read back to the host."""

    step: int
    total_steps: int
    loss: float | None
    images_per_sec: float | None = None


@dataclass(frozen=True)
class StepLogged(Event):
    """One metrics.jsonl line: the loss averaged over the last log interval; a loss of several
    terms (a VAE's reconstruction and KL) also gives each term's mean over the interval."""

    step: int
    epoch: int
    loss: float
    lr: float
    images_per_sec: float
    elapsed: float
    memory_bytes: int = 0  # peak device memory (CUDA) or peak process memory (CPU)
    parts: dict[str, float] = field(default_factory=dict)  # e.g. {"reconstruction": ..., "kl": ...}


@dataclass(frozen=True)
class LossByNoiseLevel(Event):
    """Mean loss per noise-level bucket over the last log interval: diagnoses "the loss falls
    but samples are noise" (low noise levels learnt, high ones not)."""

    step: int
    edges: tuple[float, ...]  # bucket edges in 0..1 (timestep / T, or the toy amount)
    losses: tuple[float | None, ...]  # None where no image fell in the bucket


@dataclass(frozen=True)
class EpochFinished(Event):
    """Average training loss over one whole epoch (the figure the course reports)."""

    epoch: int
    loss: float


@dataclass(frozen=True)
class PreviewReady(Event):
    """A sample grid (PIL image) from fixed noise, also saved at `path`; a figure of another kind
    (a VAE's latent channels) says what it is in `title`."""

    step: int
    image: Any
    path: Path | None = None
    title: str = ""


@dataclass(frozen=True)
class CheckpointSaved(Event):
    """A resumable checkpoint was written."""

    step: int
    path: Path


@dataclass(frozen=True)
class LogLine(Event):
    """A line for the person watching."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class JobFinished(Event):
    """The job ended normally (`status` "finished") or at a stop request ("stopped")."""

    status: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobError(Event):
    """The job raised; `exit_code` is 2 for bad input, 1 for a failure while running."""

    message: str
    exit_code: int = 1
    traceback: str = ""


TERMINAL_EVENTS = (JobFinished, JobError)

PROGRESS_INTERVAL_S = 0.1  # jobs emit Progress at most ~10 times a second, whatever their step rate
