r"""How fast the lab starts: the TUI's first frame and `difflab --help`, each against a
reference measured side by side in the same run (these machines are noisy).

* first frame: a child process starts `difflab`'s app headless and reports when the
  first screen is composed and painted (Textual's auto-pilot runs then); the
  reference is a minimal Textual app (a Static and a Footer) started the same way.
  The lab must not pay for torch before its first frame: the worker imports it.
* --help: `python -m difflab --help` against `python -c pass` (the interpreter alone).

Run: python benchmarks/startup.py [--rounds 5] [--baseline DIR]
--baseline DIR also measures another checkout of difflab (e.g. `git worktree add /tmp/base
HEAD~3`), interleaved with this one, and prints this checkout's time over the baseline's.
Targets on this 2-core machine: first frame under 1 s, --help under 0.3 s. Figures to
quote, not tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_FRAME = r"""
import sys, time
start = float(sys.argv[1])
{app}
async def auto_pilot(pilot):
    print(f"first-frame {{time.time() - start:.4f}}", flush=True)
    pilot.app.exit()
app.run(headless=True, size=(100, 32), auto_pilot=auto_pilot)
"""

DIFFLAB_APP = "from difflab.screens.app import DifflabApp\napp = DifflabApp()"
MINIMAL_APP = """from textual.app import App
from textual.widgets import Footer, Static
class Minimal(App):
    def compose(self):
        yield Static("hello")
        yield Footer()
app = Minimal()"""


# Every child starts outside the repository: `python -c` puts its working folder first on sys.path,
# which would import this checkout's difflab/ even where PYTHONPATH names the baseline's.
NEUTRAL_DIR = tempfile.gettempdir()


def first_frame_seconds(app_code: str, env: dict | None = None) -> float:
    code = FIRST_FRAME.format(app=app_code)
    out = subprocess.run([sys.executable, "-c", code, repr(time.time())], capture_output=True, text=True,
                         timeout=120, env=env, cwd=NEUTRAL_DIR).stdout
    return float(next(line for line in out.splitlines() if line.startswith("first-frame")).split()[1])


def command_seconds(args: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(args, capture_output=True, check=True, timeout=120, env=env, cwd=NEUTRAL_DIR)
    return time.perf_counter() - started


def checkout_env(root: Path) -> dict:
    """An environment in which `import difflab` is the checkout at `root`, not the installed one.

    The installed package maps difflab.screens and difflab.recipes to the repository's top-level
    folders; a plain checkout on PYTHONPATH finds them through links made inside its difflab/.
    """
    for name in ("screens", "recipes"):
        link = root / "difflab" / name
        if not link.exists():
            link.symlink_to(root / name, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(root)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another difflab checkout to measure side by side")
    args = parser.parse_args()
    baseline = checkout_env(args.baseline.resolve()) if args.baseline else None
    rows = {"lab first frame": [], "minimal Textual app": [], "difflab --help": [], "python -c pass": []}
    if baseline:
        rows.update({"baseline first frame": [], "baseline --help": []})
    for _ in range(args.rounds):  # interleaved, so both sides see the same machine noise
        rows["lab first frame"].append(first_frame_seconds(DIFFLAB_APP))
        rows["minimal Textual app"].append(first_frame_seconds(MINIMAL_APP))
        rows["difflab --help"].append(command_seconds([sys.executable, "-m", "difflab", "--help"]))
        rows["python -c pass"].append(command_seconds([sys.executable, "-c", "pass"]))
        if baseline:
            rows["baseline first frame"].append(first_frame_seconds(DIFFLAB_APP, baseline))
            rows["baseline --help"].append(command_seconds([sys.executable, "-m", "difflab", "--help"], baseline))
    medians = {name: statistics.median(values) for name, values in rows.items()}
    for name, value in medians.items():
        print(f"{name:22s} median {value * 1000:7.0f} ms   ({', '.join(f'{v * 1000:.0f}' for v in rows[name])})")
    print(f"first frame: {medians['lab first frame']:.2f} s (target < 1 s), "
          f"{medians['lab first frame'] / medians['minimal Textual app']:.2f}x a minimal Textual app")
    print(f"difflab --help: {medians['difflab --help']:.2f} s (target < 0.3 s), "
          f"{medians['difflab --help'] / medians['python -c pass']:.2f}x the bare interpreter")
    if baseline:
        print(f"against {args.baseline}: first frame {medians['lab first frame'] / medians['baseline first frame']:.2f}x, "
              f"--help {medians['difflab --help'] / medians['baseline --help']:.2f}x (below 1: this checkout is faster)")


if __name__ == "__main__":
    main()
