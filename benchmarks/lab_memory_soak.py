r"""Memory of the lab during a long training run: the app's training screen trains the
from-scratch recipe with previews every 50 steps for M minutes; the process's resident
memory is read every minute. What must not grow: anything beyond the metrics history
(one float per logged step). Figures to quote, not tests.

Run: python benchmarks/lab_memory_soak.py [--minutes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from difflab.recipe import load_recipe, save_recipe  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(path: Path, minutes: float) -> list[tuple[float, float, int]]:
    from difflab.screens.app import DifflabApp

    app = DifflabApp(path, device="cpu")
    readings = []
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("4")
        await pilot.pause(0.5)
        await pilot.press("ctrl+r")
        started = time.monotonic()
        next_reading = started
        while time.monotonic() - started < minutes * 60:
            if time.monotonic() >= next_reading:
                screen = app.training_screen
                readings.append((time.monotonic() - started, rss_mb(), getattr(screen, "_step", 0)))
                print(f"{readings[-1][0] / 60:5.1f} min  {readings[-1][1]:7.1f} MB", flush=True)
                next_reading += 60
            await pilot.pause(1.0)
        app.training_screen.stop()
        while app.training_screen.running:
            await pilot.pause(0.2)
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        from difflab.runtime.catalog import find_recipe

        recipe = load_recipe(find_recipe("from-scratch"), ["train.epochs=100000", "train.sample_every=50",
                                                           "train.checkpoint_every=500", "device='cpu'"])
        path = Path(tmp) / "soak.toml"
        save_recipe(recipe, path)
        readings = asyncio.run(soak(path, args.minutes))
    first = next((mb for t, mb, _ in readings if t >= 60), readings[0][1])  # after warm-up
    last = readings[-1][1]
    print(f"resident memory: {first:.1f} MB at 1 min, {last:.1f} MB at {readings[-1][0] / 60:.0f} min "
          f"({last - first:+.1f} MB over {len(readings)} readings)")


if __name__ == "__main__":
    main()
