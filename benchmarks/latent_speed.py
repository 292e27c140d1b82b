r"""Training on latents against training on pixels, side by side, and what encoding the dataset costs.

What it measures
----------------
Images per second of difflab's own training step for the same UNet2DModel (block_out_channels
--unet, one layer per block, DownBlock2D + AttnDownBlock2D, batch --batch) on the same 32 px RGB
shapes, two ways, alternating in one process so that both see the same machine noise:

* pixels: the UNet on the 32x32x3 images;
* latents: the UNet on their 8x8x4 latents through an AutoencoderKL of block_out_channels
  (32, 64, 64) and 4 latent channels (the size SD-AT-LAB-SCALE.md measured; random weights,
  which cost the same time as trained ones), a recipe with `[latent] vae = ...`.

Each is a real ``TrainingJob`` on a real ``Worker`` thread; the time comes from the job's own
``StepLogged`` events, between the line logged at warm-up step W and the one at W + N (as
train_speed.py reads it), so start-up, the one-off encoding of the dataset and the export
after the last step are left out. Each round runs both (the order alternates); the result is
the median of latent img/s / pixel img/s over the rounds.

Encoding: a latent job encodes the dataset once, when it starts, and trains on the cached
latents for every epoch. The script counts the images AutoencoderKL.encode sees during each
latent job (it wraps the method; the job runs on a thread of this process): the dataset's
size once, whatever the number of epochs. It times one pass of the same encoding
(latents.encode_dataset, what the job calls) and sets it beside one epoch of latent training
at the measured rate: what a VAE pass per epoch would cost.

How to run it
-------------
    python benchmarks/latent_speed.py                     # cpu or cuda, whichever is there
    python benchmarks/latent_speed.py --device cpu --threads 2 --rounds 3
    python benchmarks/latent_speed.py --unet 64,128 --images 1024

Use --threads 1 on a 2-core box that anything else is using: with torch's two threads and the
other core busy, every parallel region waits on a descheduled thread (a latent step took ~1 s
instead of ~0.09 s, and the rounds' ratios spread from 4.8x to 12.6x).

Flags: --rounds R (default 3), --pixel-steps N (timed pixel steps, default 4), --latent-steps N
(default 40: a latent step is much shorter, and the latent job must span several epochs),
--warmup W (default 2), --batch B (default 32), --images (dataset size, default 256),
--unet C1,C2 (default 32,64), --device cpu|cuda|auto, --threads T.

These are figures to quote (in a README, a changelog, a pull request), not tests: the script
only prints, it asserts nothing and exits 0 when every job ran.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from diffusers import AutoencoderKL
from machine import chosen_device, device_name  # benchmarks/machine.py, beside this script

from difflab.diffusion.data import load_dataset
from difflab.diffusion.latents import encode_dataset, open_codec
from difflab.jobs.training import TrainingJob
from difflab.recipe import parse_recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import Worker

SEED = 0
IMAGE_SIZE = 32
VAE_CHANNELS = (32, 64, 64)  # three levels: 32 px -> 8 px latents


def save_vae(folder: Path) -> Path:
    """A random AutoencoderKL of the lab-scale size: 32x32x3 images <-> 8x8x4 latents."""
    levels = len(VAE_CHANNELS)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=VAE_CHANNELS,
                  down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                  layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=IMAGE_SIZE
                  ).save_pretrained(folder)
    return folder


def recipe_data(device: str, unet: list[int], batch: int, images: int, steps: int, log_every: int,
                vae: Path | None) -> dict:
    """The same recipe for both: shapes, a DDPM UNet2DModel; `vae` makes it a latent recipe."""
    return {
        "seed": SEED, "device": device,
        "dataset": {"source": "shapes", "num_images": images, "image_size": IMAGE_SIZE, "channels": 3,
                    "value_range": "-1..1"},
        "schedule": {"kind": "ddpm"},
        "model": {"kind": "unet2d", "block_out_channels": unet, "layers_per_block": 1, "norm_num_groups": 8,
                  "down_block_types": ["DownBlock2D", *["AttnDownBlock2D"] * (len(unet) - 1)],
                  "up_block_types": [*["AttnUpBlock2D"] * (len(unet) - 1), "UpBlock2D"]},
        "train": {"objective": "epsilon", "batch_size": batch, "epochs": 100_000, "max_steps": steps,
                  "log_every": log_every, "sample_every": 0, "checkpoint_every": 0, "keep_checkpoints": 1},
        "sample": {"sampler": "ddim", "steps": 1, "num_images": 1, "trajectory_steps": 1, "trajectory_images": 1, "gif": False},
        "eval": {"enabled": False},
        "latent": {"vae": str(vae) if vae else ""},
    }


class EncodeCounter:
    """Counts the images AutoencoderKL.encode is given, in any thread of this process."""

    def __init__(self) -> None:
        self.images = 0
        self._original = AutoencoderKL.encode

    def __enter__(self) -> Self:
        original, counter = self._original, self

        def counting(vae, x, *args, **kwargs):
            counter.images += len(x)
            return original(vae, x, *args, **kwargs)

        AutoencoderKL.encode = counting
        return self

    def __exit__(self, *exc) -> None:
        AutoencoderKL.encode = self._original


def run_job(data: dict, warmup: int, steps: int, workdir: Path, tag: str) -> dict:
    """One TrainingJob on a fresh Worker: seconds and images between StepLogged at W and W+N,
    epochs trained, and the images the VAE encoded meanwhile."""
    recipe = parse_recipe(data, "<benchmark>")
    run = RunDir.create(workdir / tag, recipe)
    worker = Worker(data["device"])
    logged: dict[int, float] = {0: 0.0}
    final = None
    with EncodeCounter() as encoded:
        handle = worker.submit(TrainingJob(recipe, run))
        for event in worker.iter_events(handle.job_id):
            match event:
                case events.StepLogged():
                    logged[event.step] = event.elapsed
                case events.JobError():
                    raise SystemExit(f"{tag}: job failed: {event.message}\n{event.traceback}")
                case events.JobFinished():
                    final = event
    worker.shutdown()
    total = warmup + steps
    if final is None or final.status != "finished" or warmup not in logged or total not in logged:
        raise SystemExit(f"{tag}: the job did not log steps {warmup} and {total} (got {sorted(logged)})")
    batch, size = data["train"]["batch_size"], final.summary["dataset_size"]
    return {"seconds": logged[total] - logged[warmup], "images": images_seen(size, batch, warmup, steps),
            "epochs": math.ceil(total / math.ceil(size / batch)), "encoded": encoded.images}


def images_seen(dataset_size: int, batch: int, first_step: int, steps: int) -> int:
    """Images in steps first_step..first_step+steps-1 (0-based) when epochs end with a partial batch."""
    per_epoch = math.ceil(dataset_size / batch)
    return sum(min(batch, dataset_size - (s % per_epoch) * batch) for s in range(first_step, first_step + steps))


def time_encoding(data: dict, vae: Path, device: str) -> tuple[float, int]:
    """Seconds of one pass of the dataset through the VAE's encoder, as the latent job makes it."""
    recipe = parse_recipe(data, "<benchmark>")
    data = load_dataset(recipe.dataset, None, recipe.seed).to(device)
    codec = open_codec(recipe, vae, device)
    codec.encode(data.images[:8])  # warm-up: the first call's one-off costs are not the pass's
    return encode_dataset(codec, data, recipe.latent.encode_batch_size).seconds, len(data)


def rate(result: dict) -> float:
    return result["images"] / result["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of pixel + latent jobs")
    parser.add_argument("--pixel-steps", type=int, default=4, help="timed training steps of the pixel job")
    parser.add_argument("--latent-steps", type=int, default=40, help="timed training steps of the latent job")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--images", type=int, default=256, help="shapes in the dataset")
    parser.add_argument("--unet", default="32,64", help="the UNet's block_out_channels (e.g. 64,128)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    unet = [int(c) for c in args.unet.split(",")]
    if min(args.rounds, args.pixel_steps, args.latent_steps, args.warmup, args.batch, args.images) < 1:
        parser.error("--rounds, --pixel-steps, --latent-steps, --warmup, --batch and --images must be at least 1")

    device = chosen_device(parser, args.device, args.threads)
    print(f"torch {torch.__version__} | device {device}: {device_name(device)} | "
          f"threads {torch.get_num_threads()} | python {platform.python_version()}")
    print(f"UNet2DModel {unet}, batch {args.batch}, {args.images} shapes: pixels 32x32x3 vs latents 8x8x4 "
          f"(AutoencoderKL {list(VAE_CHANNELS)}); {args.rounds} rounds, {args.pixel_steps} / {args.latent_steps} "
          f"timed steps after {args.warmup} warm-up steps")

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="difflab-bench-") as tmp:
        workdir = Path(tmp)
        vae = save_vae(workdir / "vae")
        jobs = {
            "pixels": (recipe_data(device, unet, args.batch, args.images, args.warmup + args.pixel_steps,
                                   math.gcd(args.warmup, args.pixel_steps), None), args.pixel_steps),
            "latents": (recipe_data(device, unet, args.batch, args.images, args.warmup + args.latent_steps,
                                    math.gcd(args.warmup, args.latent_steps), vae), args.latent_steps),
        }
        for r in range(args.rounds):
            order = ("pixels", "latents") if r % 2 == 0 else ("latents", "pixels")
            result = {}
            for which in order:
                data, steps = jobs[which]
                result[which] = res = run_job(data, args.warmup, steps, workdir, f"{which}-{r}")
                print(f"  round {r + 1} {which:7s}: {rate(res):8.1f} img/s "
                      f"({res['seconds'] / steps * 1000:.0f} ms/step; {res['epochs']} epochs, "
                      f"{res['encoded']} images encoded by the VAE)", flush=True)
            rows.append((r + 1, order[0], result["pixels"], result["latents"]))
        encode_s, encoded = time_encoding(jobs["latents"][0], vae, device)

    ratios = [rate(lat) / rate(pix) for _, _, pix, lat in rows]
    latent_rate = statistics.median(rate(lat) for _, _, _, lat in rows)
    epoch_s = args.images / latent_rate
    print(f"{'round':>5} {'first':>8} {'pixel img/s':>12} {'latent img/s':>13} {'ratio':>8} "
          f"{'latent epochs':>14} {'VAE images':>11}")
    for (r, first, pix, lat), ratio in zip(rows, ratios, strict=True):
        print(f"{r:>5} {first:>8} {rate(pix):>12.1f} {rate(lat):>13.1f} {ratio:>7.2f}x {lat['epochs']:>14} "
              f"{lat['encoded']:>11}")
    print(f"latent/pixel training throughput: {statistics.median(ratios):.1f}x (median of {args.rounds} rounds, "
          f"{device}, UNet {unet}, batch {args.batch})")
    encoded_per_job = sorted({lat["encoded"] for _, _, _, lat in rows})
    epochs = sorted({lat["epochs"] for _, _, _, lat in rows})
    print(f"encoding: each latent job's VAE saw {'/'.join(map(str, encoded_per_job))} images over "
          f"{'/'.join(map(str, epochs))} epochs of {args.images} (one pass, then cached latents); the pixel "
          f"jobs' {sum(pix['encoded'] for _, _, pix, _ in rows)}")
    print(f"encoding {encoded} images once: {encode_s:.2f} s; one latent epoch at {latent_rate:.0f} img/s: "
          f"{epoch_s:.2f} s, so a VAE pass per epoch would make each epoch {(epoch_s + encode_s) / epoch_s:.1f}x "
          f"as long")
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
