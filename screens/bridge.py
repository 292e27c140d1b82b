"""The bridge between the Textual app and the engine's worker thread.

Jobs go to one difflab Worker. Its events are never pushed into the UI one by one:
a timer drains the queue a few times a second, keeps only the newest Progress per
job (older ones are stale by then), and hands the rest to the job's handler on the
UI thread. A busy job therefore costs the UI at most one repaint per tick.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from difflab.events import TERMINAL_EVENTS, Event, Progress
from difflab.worker import Job, JobHandle, Worker

EventHandler = Callable[[Event], None]
DRAIN_HZ = 15


class EngineBridge:
    """Submit jobs to the worker; deliver their events to handlers, coalesced, on drain()."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._worker: Worker | None = None
        self._handlers: dict[int, EventHandler] = {}
        self._handles: dict[int, JobHandle] = {}

    @property
    def worker(self) -> Worker:
        if self._worker is None:  # started on first use: the first frame needs no thread, no torch
            self._worker = Worker(self.device)
        return self._worker

    def submit(self, job: Job, on_event: EventHandler) -> JobHandle:
        handle = self.worker.submit(job)
        self._handlers[handle.job_id] = on_event
        self._handles[handle.job_id] = handle
        return handle

    def close(self, timeout: float = 60.0) -> None:
        """Stop every job still running (training writes its checkpoint) and end the worker."""
        if self._worker is None:
            return
        for handle in self._handles.values():
            handle.control.stop()
        self._worker.shutdown(timeout)

    def forget(self, job_id: int) -> None:
        """Stop delivering a job's events (its screen no longer wants them)."""
        self._handlers.pop(job_id, None)

    def drain(self) -> int:
        """Deliver every waiting event (newest Progress per job only); returns how many were delivered."""
        if self._worker is None:
            return 0
        waiting: list[Event] = []
        while True:
            try:
                waiting.append(self._worker.events.get_nowait())
            except queue.Empty:
                break
        delivered = 0
        for event in _coalesce(waiting):
            handler = self._handlers.get(event.job_id)
            if handler is not None:
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
