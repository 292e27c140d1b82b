"""The UI's bridge to the worker: events arrive coalesced, on the UI's schedule."""

from __future__ import annotations

from difflab.runtime import events
from difflab.screens.bridge import EngineBridge, _coalesce


def test_only_the_newest_progress_per_job_survives_a_drain():
    waiting = [events.Progress(1, 1, 10, None), events.LogLine(1, "a"), events.Progress(2, 5, 9, None),
               events.Progress(1, 2, 10, 0.5), events.Progress(1, 3, 10, 0.4), events.JobFinished(2, "finished")]
    kept = _coalesce(waiting)
    assert kept == [events.LogLine(1, "a"), events.Progress(2, 5, 9, None), events.Progress(1, 3, 10, 0.4),
                    events.JobFinished(2, "finished")]


class Chatty:
    """A job that reports every one of many steps."""

    name, device = "chatty", "cpu"

    def run(self, ctx):
        for step in range(1, 501):
            ctx.emit(events.Progress(ctx.job_id, step, 500, None))
        return "finished", {"steps": 500}


def test_a_job_emitting_500_progress_events_reaches_the_ui_as_a_handful():
    bridge = EngineBridge("cpu")
    seen = []
    handle = bridge.submit(Chatty(), seen.append)
    bridge.worker.shutdown(timeout=30)  # finish the job, then drain once as the UI timer would
    assert bridge.drain() == 2
    assert seen[0].step == 500 and seen[-1].summary == {"steps": 500}
    assert not bridge.busy and handle.job_id == seen[0].job_id


class Holding:
    """A device job that runs until it is released (a training job, for the bridge)."""

    name, device = "holding", "cpu"

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def run(self, ctx):
        assert self.release.wait(30)
        return "finished", {}


class Quick:
    name, device = "quick", "cpu"

    def run(self, ctx):
        import threading

        return "finished", {"thread": threading.current_thread().name}


def test_a_probe_finishes_while_the_device_worker_is_busy_training():
    import time

    bridge = EngineBridge("cpu")
    long_job, seen = Holding(), []
    training = bridge.submit(long_job, seen.append)
    probe = bridge.submit_probe(Quick(), seen.append)
    assert probe.job_id != training.job_id
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        bridge.drain()
        time.sleep(0.01)
    assert [e.job_id for e in seen] == [probe.job_id]  # the probe is done, the training job still runs
    assert seen[0].summary == {"thread": "difflab-probes"}
    long_job.release.set()
    bridge.close()
    bridge.drain()
    assert seen[-1].job_id == training.job_id and seen[-1].status == "finished"


def test_the_probe_worker_ends_its_thread_once_idle_and_the_next_probe_starts_one(monkeypatch):
    import time

    from difflab.screens import bridge as bridge_module

    monkeypatch.setattr(bridge_module, "PROBE_IDLE_EXIT", 0.05)
    bridge, seen = EngineBridge("cpu"), []
    for _ in range(2):
        bridge.submit_probe(Quick(), seen.append)
        deadline = time.monotonic() + 30
        while (bridge.probe_worker.alive or bridge.busy) and time.monotonic() < deadline:
            bridge.drain()
            time.sleep(0.01)
        assert not bridge.probe_worker.alive and not bridge.busy
    assert [e.summary for e in seen] == [{"thread": "difflab-probes"}] * 2
    bridge.close()
