r"""The lab while it trains: throughput inside the app against the headless runner, and how
fast the screen answers a key meanwhile. Both sides of each ratio run in one process.

(a) throughput: the from-scratch recipe (BasicUNet, batch 128, 28 px digits) trained for
    W + N steps (a) bare, on a Worker whose events the main thread consumes and drops (the
    reference), (b) by the headless runner's Reporter, its live Rich progress bar drawn to a
    terminal-like console, and (c) from the training screen of a running DifflabApp
    (Textual's headless driver, the screen's loss plot, stats and log all updating),
    interleaved over rounds. Each side's img/s comes from the job's own StepLogged events
    between step W and W + N. Target: in-app at least 0.95x bare (also printed: vs (b)).
(b) latency while training: on the training screen, a second thread sends `l` (log/linear
    loss plot, a full plot redraw) through the driver, as a terminal's input thread does, at
    irregular intervals; each press is timed from sending until the first frame the app
    hands its driver after the key's action ran, that frame rendered to escape codes as a
    terminal would receive it. Target: p95 under 50 ms. (Pilot.press cannot time this: it
    waits for the process to look idle, which never happens while a job trains.)
    Also printed: the share of one core the UI thread used while the job trained.

Run: python benchmarks/lab_responsiveness.py [--steps 40] [--warmup 5] [--rounds 2] [--presses 40]
                                            [--device cpu|cuda] [--persistent-probes]
Figures to quote, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from difflab.recipe import load_recipe, save_recipe  # noqa: E402
from difflab.runtime import events  # noqa: E402


def recipe_file(folder: Path, steps: int, device: str = "cpu") -> Path:
    """from-scratch, cut to `steps` steps, no previews or checkpoints in the timed window."""
    from difflab.runtime.catalog import find_recipe

    recipe = load_recipe(find_recipe("from-scratch"), [
        f"train.max_steps={steps}", "train.sample_every=0", "train.checkpoint_every=0", "train.log_every=1",
        "sample.num_images=1", "sample.steps=1", "sample.trajectory_images=1", "sample.trajectory_steps=1",
        "sample.gif=false", f"device='{device}'"])
    path = folder / "bench.toml"
    save_recipe(recipe, path)
    return path


def rate(logged: list[events.StepLogged], warmup: int, batch: int) -> float:
    """Images per second between the StepLogged at `warmup` and the last one."""
    by_step = {e.step: e for e in logged}
    first, last = by_step[warmup], by_step[max(by_step)]
    return (last.step - first.step) * batch / (last.elapsed - first.elapsed)


def headless_rate(path: Path, warmup: int, report: bool = False) -> float:
    """img/s on a bare Worker, or (`report`) with the headless runner's live progress bar."""
    from rich.console import Console

    from difflab.cli.report import Reporter
    from difflab.jobs.training import TrainingJob
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    recipe = load_recipe(path)
    worker = Worker(recipe.device)
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as terminal:
        handle = worker.submit(TrainingJob(recipe, RunDir.create(Path(tmp) / "run", recipe), path.parent))
        # as `difflab run` in a terminal: Rich redraws the bar 10 times a second on its own thread
        console = Console(file=terminal, force_terminal=True, width=100, color_system="truecolor")
        with Reporter(console) if report else contextlib.nullcontext() as reporter:
            logged = []
            for event in worker.iter_events(handle.job_id):
                if reporter is not None:
                    reporter.handle(event)
                if isinstance(event, events.StepLogged):
                    logged.append(event)
    worker.shutdown()
    return rate(logged, warmup, recipe.train.batch_size)


class FrameClock:
    """When the app hands each frame to its driver, rendered to the escape codes a terminal gets."""

    def __init__(self, app) -> None:
        from textual._compositor import CompositorUpdate

        self.times: list[float] = []
        display = app._display  # the one place every screen's update goes to the terminal

        def timed_display(screen, renderable) -> None:
            display(screen, renderable)
            if renderable is not None:
                if isinstance(renderable, CompositorUpdate):  # the headless driver skips this cost
                    renderable.render_segments(app.console)
                self.times.append(time.perf_counter())

        app._display = timed_display

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.times if t > moment), None)


def send_keys(app, key: str, count: int, sent: list[float], done: threading.Event) -> None:
    """A terminal's input thread: post `key` through the driver `count` times, 80-200 ms apart."""
    from textual import events as textual_events

    pace = random.Random(0)
    for _ in range(count):
        time.sleep(pace.uniform(0.08, 0.2))
        sent.append(time.perf_counter())
        app._driver.send_message(textual_events.Key(key, key))
    done.set()


async def in_app(path: Path, warmup: int, presses: int, keep_probe_thread: bool = False,
                 ) -> tuple[float, list[float], float]:
    """Train from the training screen while keys arrive; (img/s, latencies in ms, UI core share).

    `keep_probe_thread`: the probe worker's thread never ends, as before it idled out.
    """
    from difflab.screens import bridge
    from difflab.screens.app import DifflabApp

    default_idle_exit = bridge.PROBE_IDLE_EXIT
    if keep_probe_thread:
        bridge.PROBE_IDLE_EXIT = None
    app = DifflabApp(path, device=load_recipe(path).device)
    app.bridge.probe_worker  # built now, with the idle exit asked for
    bridge.PROBE_IDLE_EXIT = default_idle_exit
    logged: list[events.StepLogged] = []
    submit = app.bridge.submit

    def tee(job, on_event):
        return submit(job, lambda e: (logged.append(e) if isinstance(e, events.StepLogged) else None,
                                      on_event(e)))

    app.bridge.submit = tee
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("4")
        await pilot.pause(0.5)
        screen = app.training_screen
        handled: list[float] = []
        toggle = screen.action_toggle_log

        def timed_toggle() -> None:
            toggle()
            handled.append(time.perf_counter())

        screen.action_toggle_log = timed_toggle
        ended = asyncio.Event()  # waited on, not polled: the harness adds no wakeups of its own
        job_ended = screen._job_ended
        screen._job_ended = lambda outcome: (job_ended(outcome), ended.set())
        frames = FrameClock(app)
        await pilot.press("ctrl+r")
        while not logged or logged[-1].step < warmup:
            await asyncio.sleep(0.05)
        sent, done = [], threading.Event()
        ui_cpu, wall = time.thread_time(), time.perf_counter()
        threading.Thread(target=send_keys, args=(app, "l", presses, sent, done), daemon=True).start()
        await ended.wait()
        ui_share = (time.thread_time() - ui_cpu) / (time.perf_counter() - wall)
        if not done.is_set():
            print(f"  (the job ended after {len(sent)} of {presses} presses: raise --steps)")
    latencies = []
    for pressed, acted in zip(sent, handled):
        frame = frames.first_after(acted)
        if frame is not None:
            latencies.append((frame - pressed) * 1000)
    return rate(logged, warmup, load_recipe(path).train.batch_size), latencies, ui_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--presses", type=int, default=40)
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the job trains")
    parser.add_argument("--persistent-probes", action="store_true",
                        help="also train in an app whose probe thread never ends (its OpenMP team stays)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the app writes its runs/ here
        path = recipe_file(Path(tmp), args.warmup + args.steps, args.device)
        ratios, runner_ratios, all_latencies, si_ratios, kept_ratios = [], [], [], [], []
        for round_ in range(1, args.rounds + 1):
            bare = headless_rate(path, args.warmup)
            runner = headless_rate(path, args.warmup, report=True)
            app_rate, latencies, ui_share = asyncio.run(in_app(path, args.warmup, args.presses))
            if args.switch_interval:
                default_interval = sys.getswitchinterval()
                sys.setswitchinterval(args.switch_interval)
                si_rate, _, si_share = asyncio.run(in_app(path, args.warmup, args.presses))
                sys.setswitchinterval(default_interval)
                si_ratios.append(si_rate / bare)
                print(f"  switch interval {args.switch_interval}: {si_rate:6.1f} img/s {si_rate / bare:.3f}x bare, UI {si_share:.1%}")
            if args.persistent_probes:
                kept_rate, _, kept_share = asyncio.run(in_app(path, args.warmup, args.presses, keep_probe_thread=True))
                kept_ratios.append(kept_rate / bare)
                print(f"  probe thread kept: {kept_rate:6.1f} img/s {kept_rate / bare:.3f}x bare, UI {kept_share:.1%}")
            ratios.append(app_rate / bare)
            runner_ratios.append(app_rate / runner)
            all_latencies += latencies
            print(f"round {round_}: bare worker {bare:6.1f} img/s, headless runner {runner:6.1f} img/s, "
                  f"in the app {app_rate:6.1f} img/s ({app_rate / bare:.3f}x bare, {app_rate / runner:.3f}x "
                  f"runner); UI thread used {ui_share:.1%} of a core")
    print(f"(a) in-app / bare worker training throughput: {statistics.median(ratios):.3f}x "
          f"(median of {args.rounds} rounds, {args.presses} key presses per round; target >= 0.95x)")
    print(f"    in-app / headless runner (live progress bar): {statistics.median(runner_ratios):.3f}x")
    if kept_ratios:
        print(f"    with the probe thread kept (its OpenMP team alive): {statistics.median(kept_ratios):.3f}x")
    if si_ratios:
        print(f"    switch interval {args.switch_interval}: {statistics.median(si_ratios):.3f}x")
    if len(all_latencies) < 2:
        print("(b) skipped: no key presses (--presses 0)")
        return
    q = statistics.quantiles(all_latencies, n=20, method="inclusive")
    print(f"(b) key press to frame while training: p50 {statistics.median(all_latencies):.1f} ms, "
          f"p95 {q[18]:.1f} ms, max {max(all_latencies):.1f} ms over {len(all_latencies)} presses "
          f"(target p95 < 50 ms)")


if __name__ == "__main__":
    main()
