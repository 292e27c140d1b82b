r"""What a busy UI thread costs a training job on the same cores: through the GIL or only the CPU.

The lab's UI thread uses ~2.5% of a core while a job trains, yet the in-app throughput is
7-10% below the bare worker's (lab_responsiveness.py). This separates the two ways a
second activity can slow the job: the from-scratch recipe (as in lab_responsiveness.py)
trains on a bare Worker while, interleaved per round,
  none:    the main thread only drains events (the reference),
  thread:  the main thread also runs pure Python for BUSY ms every PERIOD s (it holds the
           GIL, as Textual's compositor does while it renders a frame),
  process: a forked child process runs the same load (CPU only, no shared GIL).
If `thread` costs clearly more than `process`, the UI's cost is amplified by the GIL, and
moving the job into its own process is the lever.

Run: python benchmarks/gil_share.py [--busy-ms 14] [--period 0.5] [--rounds 4] [--steps 60]
Figures to quote, not tests.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lab_responsiveness import rate, recipe_file  # noqa: E402

WARMUP = 5


def busy(ms: float) -> None:
    """Pure-Python work (it holds the GIL) for `ms` milliseconds."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def load_loop(stop, ms: float, period: float) -> None:
    while not stop.is_set():
        time.sleep(period)
        busy(ms)


def train(path: Path, mode: str, ms: float, period: float) -> float:
    """img/s of one training job on a bare Worker with the given extra load."""
    from difflab.jobs.training import TrainingJob
    from difflab.recipe import load_recipe
    from difflab.runtime import events
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    recipe = load_recipe(path)
    worker = Worker("cpu")
    stop = multiprocessing.Event() if mode == "process" else threading.Event()
    logged, done = [], False
    with tempfile.TemporaryDirectory() as tmp:
        handle = worker.submit(TrainingJob(recipe, RunDir.create(Path(tmp) / "run", recipe), path.parent))
        child = None
        if mode == "process":
            child = multiprocessing.get_context("fork").Process(target=load_loop, args=(stop, ms, period))
            child.start()
        while not done:
            time.sleep(period)
            if mode == "thread":
                busy(ms)
            while True:  # drain what came, as the app's timer does
                try:
                    event = worker.events.get_nowait()
                except queue.Empty:
                    break
                if isinstance(event, events.StepLogged) and event.job_id == handle.job_id:
                    logged.append(event)
                done = done or isinstance(event, events.TERMINAL_EVENTS)
        stop.set()
        if child is not None:
            child.join()
    worker.shutdown()
    return rate(logged, WARMUP, recipe.train.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy-ms", type=float, default=14.0)
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = recipe_file(Path(tmp), WARMUP + args.steps)
        rates: dict[str, list[float]] = {"none": [], "thread": [], "process": []}
        for round_ in range(1, args.rounds + 1):
            for mode, values in rates.items():
                values.append(train(path, mode, args.busy_ms, args.period))
            print(f"round {round_}: " + ", ".join(f"{m} {v[-1]:6.1f} img/s" for m, v in rates.items()), flush=True)
    duty = args.busy_ms / 1000 / args.period
    for mode in ("thread", "process"):
        ratio = statistics.median(a / b for a, b in zip(rates[mode], rates["none"]))
        print(f"{mode:7s} load ({duty:.1%} of a core): {ratio:.3f}x the unloaded job (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
