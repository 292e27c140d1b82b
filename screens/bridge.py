"""The bridge between the Textual app and the engine's worker thread.

Jobs go to two difflab Workers: the device worker runs training and sampling, one job
at a time; the probe worker runs the screens' small CPU jobs (dataset grid, schedule
curves, model summary), so a screen answers while a model trains. Events are never
pushed into the UI one by one: a timer drains both queues 10 times a second, keeps
only the newest Progress per job (older ones are stale by then), and hands the rest to
the job's handler on the UI thread. A busy job costs the UI at most one repaint per tick.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import replace

from difflab.jobs.devices import resolve_device
from difflab.runtime.crashes import internal_error_line, write_crash_log
from difflab.runtime.events import TERMINAL_EVENTS, Event, JobError, Progress
from difflab.runtime.worker import Job, JobHandle, Worker

EventHandler = Callable[[Event], None]
# Each drain wakes the UI thread (~0.3 ms of Textual's timer machinery even with nothing to
# deliver, measured): 10 a second keeps progress smooth and costs a training job a third less
# than 15 did; the training screen only redraws twice a second anyway.
DRAIN_HZ = 10
# Long enough that a screen's burst of probes shares one thread, short enough that a
# training job soon has the cores' OpenMP threads to itself again (see probe_worker).
PROBE_IDLE_EXIT = 2.0


class EngineBridge:
    """Submit jobs to the worker; deliver their events to handlers, coalesced, on drain()."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._worker: Worker | None = None
        self._probe_worker: Worker | None = None
        self._handlers: dict[int, EventHandler] = {}
        self._handles: dict[int, JobHandle] = {}

    @property
    def worker(self) -> Worker:
        """The device worker (started on first use: the first frame needs no thread, no torch)."""
        if self._worker is None:
            self._worker = Worker(self.device, resolve_device=resolve_device)
        return self._worker

    @property
    def probe_worker(self) -> Worker:
        """The CPU worker for probes: they never queue behind a training job.

        Its thread ends when it has been idle for PROBE_IDLE_EXIT seconds. Each thread
        that runs a parallel torch op on the CPU keeps an OpenMP team of its own, and once
        a process holds more OpenMP threads than there are cores, libgomp makes every
        team's threads sleep between parallel regions instead of spinning: a training
        job's two threads then blocked ~1,000 times a second each, and in the lab it ran at
        0.88x the bare worker instead of 0.98x (benchmarks/README.md). A team ends with its thread.
        """
        if self._probe_worker is None:
            self._probe_worker = Worker("cpu", name="difflab-probes", idle_exit=PROBE_IDLE_EXIT)
        return self._probe_worker

    def submit(self, job: Job, on_event: EventHandler) -> JobHandle:
        """Run `job` on the device worker."""
        return self._track(self.worker.submit(job), on_event)

    def submit_probe(self, job: Job, on_event: EventHandler) -> JobHandle:
        """Run a screen's probe on the probe worker."""
        return self._track(self.probe_worker.submit(job), on_event)

    def _track(self, handle: JobHandle, on_event: EventHandler) -> JobHandle:
        self._handlers[handle.job_id] = on_event
        self._handles[handle.job_id] = handle
        return handle

    def close(self, timeout: float = 60.0) -> None:
        """Stop every job still running (training writes its checkpoint) and end the workers."""
        for handle in self._handles.values():
            handle.control.stop()
        for worker in (self._probe_worker, self._worker):
            if worker is not None:
                worker.shutdown(timeout)

    def forget(self, job_id: int) -> None:
        """Stop delivering a job's events (its screen no longer wants them)."""
        self._handlers.pop(job_id, None)

    def drain(self) -> int:
        """Deliver every waiting event (newest Progress per job only); returns how many were delivered."""
        waiting: list[Event] = []
        for worker in (self._worker, self._probe_worker):
            while worker is not None:
                try:
                    waiting.append(worker.events.get_nowait())
                except queue.Empty:
                    break
        delivered = 0
        for event in _coalesce(waiting):
            event = _as_internal_error(event)
            handler = self._handlers.get(event.job_id)
            if handler is not None and _still_listening(handler):
                handler(event)
                delivered += 1
            if isinstance(event, TERMINAL_EVENTS):
                self._handlers.pop(event.job_id, None)
                self._handles.pop(event.job_id, None)
        return delivered

    @property
    def busy(self) -> bool:
        return bool(self._handlers)


def _coalesce(events: list[Event]) -> list[Event]:
    """Drop every Progress that a later Progress of the same job supersedes."""
    last_progress = {e.job_id: i for i, e in enumerate(events) if isinstance(e, Progress)}
    return [e for i, e in enumerate(events) if not isinstance(e, Progress) or last_progress[e.job_id] == i]


def _as_internal_error(event: Event) -> Event:
    """A job's crash (a JobError carrying a traceback: a bug, not the user's input) becomes one line
    naming a log file with the traceback, as the headless runner prints it; the screens show it."""
    if not isinstance(event, JobError) or not event.traceback:
        return event
    log = write_crash_log(event.traceback)
    return replace(event, message=internal_error_line(event.message, log), traceback="")


def _still_listening(handler) -> bool:
    """False for a handler whose widget is gone or going: the lab is quitting, or its screen was
    removed. A result delivered then queried widgets that teardown had already removed (NoMatches)."""
    owner = getattr(handler, "__self__", None)
    if owner is None or not hasattr(owner, "is_attached"):
        return True
    # Textual has no public "closing" flag: _closing is set as a widget starts to close, and
    # App._exit as soon as exit() is called.
    return owner.is_attached and not owner._closing and not getattr(owner.app, "_exit", False)
