r"""How fast a sample grid becomes terminal cells: the lab's half-cell image widget
(textual-image's renderable, as the screens use it) against climage (what the headless
runner prints), on the same 64-column preview, measured side by side in one run.

Run: python benchmarks/render_speed.py [--rounds 20] [--width 64]
Target: a 64-column preview renders in well under 20 ms. Figures to quote, not tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image
from rich.console import Console
from textual_image.renderable.halfcell import Image as HalfcellRenderable

from difflab.diffusion.render import terminal_image


def sample_grid(size: int = 242) -> Image.Image:
    """A stand-in for an 8x8 grid of 28 px samples (noise, so no compression shortcut helps)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def halfcell_ms(image: Image.Image, width: int) -> float:
    console = Console(width=width, color_system="truecolor", file=open("/dev/null", "w"))
    started = time.perf_counter()
    segments = list(console.render(HalfcellRenderable(image, width=width), console.options))
    elapsed = time.perf_counter() - started
    assert segments
    return elapsed * 1000


def climage_ms(image: Image.Image, width: int) -> float:
    started = time.perf_counter()
    text = terminal_image(image, width=width, truecolor=True)
    elapsed = time.perf_counter() - started
    assert text
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    image = sample_grid()
    half, clim = [], []
    for _ in range(args.rounds):  # interleaved
        half.append(halfcell_ms(image, args.width))
        clim.append(climage_ms(image, args.width))
    h, c = statistics.median(half), statistics.median(clim)
    print(f"{args.width}-column preview of a {image.width}x{image.height} grid, median of {args.rounds}:")
    print(f"  half-cell widget renderable: {h:6.2f} ms (target well under 20 ms)")
    print(f"  climage (headless runner):   {c:6.2f} ms")
    print(f"half-cell is {c / h:.1f}x faster than climage")


if __name__ == "__main__":
    main()
