"""A bug in a job reaches the lab as the headless runner prints it: one "internal error:" line
naming a log file that holds the traceback; the traceback itself never reaches the screen."""

from __future__ import annotations

import time
from pathlib import Path

from difflab.runtime import events
from difflab.screens.bridge import EngineBridge


class BuggyJob:
    name = "buggy"
    device = "cpu"

    def run(self, ctx):
        return {}["a key that is not there"]


def test_a_crashing_job_is_one_line_naming_its_log_in_the_lab():
    bridge = EngineBridge("cpu")
    seen: list[events.Event] = []
    bridge.submit(BuggyJob(), seen.append)
    deadline = time.monotonic() + 30
    while not any(isinstance(e, events.JobError) for e in seen):
        assert time.monotonic() < deadline, "the job's error never arrived"
        bridge.drain()
        time.sleep(0.02)
    bridge.close()
    error = next(e for e in seen if isinstance(e, events.JobError))
    assert error.message.startswith("internal error: KeyError: ") and "\n" not in error.message
    assert error.traceback == ""
    log = Path(error.message.split("the traceback is in ")[1].split(",")[0])
    assert "Traceback (most recent call last)" in log.read_text() and "BuggyJob" not in error.message
