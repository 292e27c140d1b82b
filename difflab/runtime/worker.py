"""One background thread that owns the torch device and runs one job at a time.

Jobs get a JobContext: the device, an `emit` for events and a JobControl they
consult between steps (pause, resume, stop, single-step). An exception in a job
becomes a JobError event; the worker keeps running and takes the next job.
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from difflab.errors import DifflabError, InputError
from difflab.runtime.events import TERMINAL_EVENTS, Event, JobError, JobFinished


class JobControl:
    """Pause, resume, stop and single-step, checked by the job between optimizer steps."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self._single_steps = 0
        self._adjustments: dict = {}

    def adjust(self, **settings) -> None:
        """Ask a running job to change settings (e.g. lr, sample_every) at its next step."""
        with self._cond:
            self._adjustments.update(settings)

    def take_adjustments(self) -> dict:
        """The settings asked for since the last call (the job calls this between steps)."""
        with self._cond:
            taken, self._adjustments = self._adjustments, {}
            return taken

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def step_once(self) -> None:
        """While paused, let exactly one more step run."""
        with self._cond:
            self._single_steps += 1
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def wait_turn(self) -> bool:
        """Block while paused (unless a single step was granted); False once stop was asked."""
        with self._cond:
            while self._paused and not self._stop and self._single_steps == 0:
                self._cond.wait()
            if self._stop:
                return False
            if self._paused:
                self._single_steps -= 1
            return True


@dataclass
class JobContext:
    """What a running job receives from the worker."""

    job_id: int
    device: str
    control: JobControl
    emit: Callable[[Event], None]


class Job(Protocol):
    """Anything with a name and a run(context) method."""

    name: str

    def run(self, context: JobContext) -> tuple[str, dict]:
        """Do the work; return (status, summary) where status is "finished" or "stopped"."""


@dataclass
class JobHandle:
    """A submitted job: its id and its control."""

    job_id: int
    control: JobControl


def named_device(requested: str) -> str:
    """The device as named. "auto" needs a resolver that can ask torch: difflab.jobs.devices.resolve_device."""
    if requested == "auto":
        raise InputError("device = 'auto': this worker has no device resolver; name the device (cpu, cuda or mps)")
    return requested


class Worker:
    """The background thread. Submit jobs; read events from `events` (a thread-safe queue).

    With `idle_exit` (seconds), the thread ends once it has waited that long with no job,
    and the next `submit` starts a new one: see EngineBridge.probe_worker for why.
    """

    _ids = itertools.count(1)  # shared by every worker: a job id names one job in the process

    def __init__(self, device: str = "auto", name: str = "difflab-worker", idle_exit: float | None = None,
                 resolve_device: Callable[[str], str] = named_device) -> None:
        self.requested_device = device
        self.resolve_device = resolve_device  # the runtime knows no torch: the jobs layer says what "auto" is
        self.name = name
        self.idle_exit = idle_exit
        self.events: queue.Queue[Event] = queue.Queue()
        self._jobs: queue.Queue[tuple[Job, JobHandle] | None] = queue.Queue()
        self._lock = threading.Lock()  # orders "start a thread" in submit against "no job: end" in _next_job
        self._thread: threading.Thread | None = None
        if idle_exit is None:
            self._start_thread()

    @property
    def alive(self) -> bool:
        """Whether the worker's thread is running now (an idle-exit worker may have none)."""
        with self._lock:
            return self._thread is not None

    def submit(self, job: Job) -> JobHandle:
        handle = JobHandle(next(self._ids), JobControl())
        with self._lock:
            self._jobs.put((job, handle))
            if self._thread is None:
                self._start_thread()
        return handle

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join(timeout)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def next_event(self, job_id: int, poll: float = 0.1) -> Event:
        """Block until the next event of one job (others are dropped: for single-job consumers)."""
        while True:
            try:
                event = self.events.get(timeout=poll)  # a short poll keeps Ctrl-C responsive
            except queue.Empty:
                continue
            if event.job_id == job_id:
                return event

    def iter_events(self, job_id: int) -> Iterator[Event]:
        """Yield events of one job until it finishes or fails."""
        while not isinstance(event := self.next_event(job_id), TERMINAL_EVENTS):
            yield event
        yield event

    def _loop(self) -> None:
        while (item := self._next_job()) is not None:
            job, handle = item
            self._run_one(job, handle)
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None

    def _next_job(self) -> tuple[Job, JobHandle] | None:
        """The next job; None to end the thread (shut down, or idle for `idle_exit` seconds)."""
        while True:
            try:
                return self._jobs.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # under the lock, so no submit can slip in unseen
                        self._thread = None
                        return None

    def _run_one(self, job: Job, handle: JobHandle) -> None:
        try:
            device = self.resolve_device(self.requested_device if getattr(job, "device", None) in (None, "auto")
                                    else job.device)
            status, summary = job.run(JobContext(handle.job_id, device, handle.control, self.events.put))
            self.events.put(JobFinished(handle.job_id, status, summary))
        except DifflabError as error:
            self.events.put(JobError(handle.job_id, str(error), error.exit_code))
        except Exception as error:  # a job's crash must never take the worker down
            self.events.put(JobError(handle.job_id, f"{type(error).__name__}: {error}", 1,
                                     traceback.format_exc()))
