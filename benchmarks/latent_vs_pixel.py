r"""Why latents: the built-in pair pixel-shapes / latent-shapes, quality against CPU time.

What it measures
----------------
The two built-in recipes train the same UNet2DModel family on the same 32 px RGB shapes: one
on the pixels (32x32x3), one on vae-shapes' latents (8x8x4). Each is run headless
(`difflab run`) with --points evenly spaced checkpoints kept; then every checkpoint is sampled
and measured against the shapes' reference classifier (the lab's normalised Frechet distance,
confidence and class entropy, as `difflab eval` reports them). The table gives, per recipe:
img/s (metrics.jsonl, training time only), the quality at each checkpoint with the training
seconds it had taken, and the training time to reach --target FD norm.

The two runs take turns on the same machine, one after the other (training is the part
compared, and it is timed from the runs' own metrics), so other load on the machine shows in
both; run it on an idle machine for figures to quote. The latent run's VAE comes from the
cache (trained there first if missing, outside the timed training: its log line says how long
the one-off encoding of the dataset took).

How to run it
-------------
    python benchmarks/latent_vs_pixel.py                      # the recipes as written (minutes)
    python benchmarks/latent_vs_pixel.py --profile smoke --points 2 --samples 128

These are figures to quote, not tests: the script only prints and exits 0 when both ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from machine import device_name  # noqa: E402  (benchmarks/machine.py, beside this script)

from difflab.diffusion.data import load_dataset  # noqa: E402
from difflab.diffusion.loading import checkpoint_setup  # noqa: E402
from difflab.jobs.evaluation import measure_model  # noqa: E402
from difflab.recipe import load_recipe  # noqa: E402
from difflab.runtime.catalog import find_recipe  # noqa: E402
from difflab.runtime.runs import RunDir  # noqa: E402

PAIR = ("pixel-shapes", "latent-shapes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="", help="a profile of both recipes (e.g. smoke)")
    parser.add_argument("--points", type=int, default=4, help="checkpoints measured per run (evenly spaced)")
    parser.add_argument("--samples", type=int, default=256, help="samples per measurement")
    parser.add_argument("--target", type=float, default=0.3, help="the FD norm. to time the runs to")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temporary folder)")
    return parser.parse_args(argv)


def train(name: str, folder: Path, args: argparse.Namespace) -> Path:
    run = folder / name
    steps = load_recipe(find_recipe(name), profile=args.profile or None).train.max_steps
    every = max(1, steps // args.points)
    command = [sys.executable, "-m", "difflab", "run", name, "--out", str(run), "--device", "cpu",
               "--set", f"train.checkpoint_every={every}", "--set", "train.keep_checkpoints=1000",
               "--set", "eval.enabled=false", "--set", "expect.enabled=false"]
    if args.profile:
        command += ["--profile", args.profile]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


def measure(run_path: Path, samples: int) -> list[dict]:
    """Each checkpoint's training seconds and sample quality."""
    run, recipe = RunDir.open(run_path)
    elapsed = {row["step"]: row["elapsed"] for row in run.read_metrics()}
    rates = [row["img_per_s"] for row in run.read_metrics()]
    data = load_dataset(recipe.dataset, run.path, recipe.seed, recipe.audio)
    rows = []
    for folder in run.list_checkpoints():
        step = int(folder.name.removeprefix("step_"))
        setup = checkpoint_setup(folder, [], "cpu")
        quality = measure_model(setup, data, samples, lambda _: None)["eval"]
        rows.append({"step": step, "seconds": elapsed.get(step), "img_per_s": sorted(rates)[len(rates) // 2],
                     "fd_norm": quality["frechet_normalised"], "confidence": quality["confidence"],
                     "entropy": quality["class_entropy_bits"]})
    return rows


def time_to(rows: list[dict], target: float) -> str:
    hit = next((r for r in rows if r["fd_norm"] <= target), None)
    return f"{hit['seconds']:.0f} s (step {hit['step']})" if hit else f"not reached in {rows[-1]['seconds']:.0f} s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"latent vs pixel on {device_name('cpu')}, profile {args.profile or '(none)'}, "
          f"{args.samples} samples per measurement")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.out or scratch)
        results = {name: measure(train(name, folder, args), args.samples) for name in PAIR}
    for name, rows in results.items():
        print(f"\n{name}: {rows[0]['img_per_s']:.1f} img/s (median of its log lines)")
        print("  step  train s  FD norm.  confidence  classes (bits)")
        for r in rows:
            print(f"  {r['step']:>4}  {r['seconds']:>7.0f}  {r['fd_norm']:>8.3f}  {r['confidence']:>10.2f}  "
                  f"{r['entropy']:>14.2f}")
        print(f"  time to FD norm. <= {args.target}: {time_to(rows, args.target)}")
    pixel, latent = (results[name] for name in PAIR)
    print(f"\nimg/s latent / pixel: {latent[0]['img_per_s'] / pixel[0]['img_per_s']:.1f}x")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
