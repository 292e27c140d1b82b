r"""Sampling speed of difflab's one loop against diffusers' own pipelines, side by side.

What it measures
----------------
The course's 28 px, 1-channel UNet2DModel (block_out_channels (32, 64, 64), 2 layers
per block, DownBlock2D / AttnDownBlock2D / AttnDownBlock2D down, the mirror image up;
randomly initialised: speed does not depend on the weights), sampling a batch of 8
images from Gaussian noise in N steps, on a DDPM linear schedule:

* (a) overhead: for DDPM, DDIM and DPM-Solver++, the share of the sampling loop's
  time spent outside the UNet, i.e. in difflab's ``diffusers_sample`` (scaling,
  scheduler step, the callback). The UNet calls are timed inside the loop (with a
  device sync around each on CUDA) and subtracted from the whole loop's time. Measured
  twice: with no callback (how final images are made) and with a callback that
  records each step's input and predicted x0 to the CPU (how the step-by-step
  figure and the GIF are made).
* (b) difflab vs pipeline: ``diffusers_sample`` against diffusers' ``DDPMPipeline``
  and ``DDIMPipeline`` built in memory from the same UNet and an equal scheduler,
  with the same steps, batch and generator seed. The pipelines run with
  ``output_type="pt"`` (no copy to the host, no numpy or PIL conversion; only their
  ``/2 + 0.5`` and clamp) and their progress bar disabled, so both sides do the
  same work; the script checks that both return the same images. Each round runs
  both (the order alternates), and the result is the median over rounds of
  pipeline seconds / difflab seconds: 1.0 means no slower, above 1 faster. Beside
  it: the ratio of the two sides' fastest rounds, and the median ratio of this
  process's CPU time. On a shared machine other load only ever adds wall time, and
  CPU time leaves out the waits for a core (not the slowdown from a busy sibling
  core), so with --threads 1 those two are the steadier figures.

How to run it
-------------
    python benchmarks/sample_speed.py                      # cpu or cuda, whichever is there
    python benchmarks/sample_speed.py --device cpu --threads 1 --rounds 5
    python benchmarks/sample_speed.py --device cuda --steps 50 --batch 64

Flags: --steps N (sampling steps, default 25), --batch B (default 8), --rounds R
(default 5), --device cpu|cuda|auto (default auto), --threads T (torch intra-op
threads; default: torch's own choice).

Target
------
pipeline / difflab >= 1.0: the per-step hook and the scheduler-agnostic loop must
cost nothing measurable when no callback is given.

These are figures to quote, not tests: the script only prints and asserts nothing
beyond the two sides agreeing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from machine import device_name  # noqa: E402  (benchmarks/machine.py, beside this script)

from difflab.diffusion.samplers import (  # noqa: E402
    Trajectory,  # noqa: E402
    diffusers_sample,
    sampler_scheduler,
)
from difflab.diffusion.schedules import noise_scheduler  # noqa: E402
from difflab.recipe import ScheduleConfig  # noqa: E402

SEED = 0
IMAGE_SIZE = 28
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
PIPELINES = ("ddpm", "ddim")


def course_unet(device: str):
    """The course's MNIST UNet2DModel, randomly initialised."""
    from diffusers import UNet2DModel

    torch.manual_seed(SEED)
    return UNet2DModel(
        sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).to(device).eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def starting_noise(batch: int, device: str) -> tuple[torch.Tensor, torch.Generator]:
    """The noise a pipeline draws first from a fresh generator, and that generator for the steps after."""
    generator = torch.Generator(device=device).manual_seed(SEED)
    noise = torch.randn((batch, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator, device=device)
    return noise, generator


# ---------------------------------------------------------------- (a) overhead


def loop_overhead(unet, name: str, steps: int, batch: int, device: str, record: bool) -> float:
    """Share of one diffusers_sample run's time spent outside the UNet calls."""
    in_unet = 0.0

    def timed_unet(x, t):
        nonlocal in_unet
        sync(device)
        start = time.perf_counter()
        out = unet(x, t).sample
        sync(device)
        in_unet += time.perf_counter() - start
        return out

    scheduler = sampler_scheduler(name, noise_scheduler(ScheduleConfig(kind="ddpm")))
    callback = Trajectory().record if record else None
    sync(device)
    start = time.perf_counter()
    noise, generator = starting_noise(batch, device)
    diffusers_sample(timed_unet, scheduler, noise, steps, generator=generator, callback=callback)
    sync(device)
    total = time.perf_counter() - start
    return (total - in_unet) / total


# ---------------------------------------------------------------- (b) vs the pipelines


def make_pipeline(name: str, unet):
    from diffusers import DDIMPipeline, DDPMPipeline

    scheduler = sampler_scheduler(name, noise_scheduler(ScheduleConfig(kind="ddpm")))
    pipeline = (DDPMPipeline if name == "ddpm" else DDIMPipeline)(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)  # tqdm's redraws are not sampling work
    return pipeline


def timed(device: str, run) -> tuple[float, float, torch.Tensor]:
    """Wall seconds, this process's CPU seconds, and what `run()` returned."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_pipeline(pipeline, steps: int, batch: int, device: str) -> tuple[float, float, torch.Tensor]:
    def run():
        generator = torch.Generator(device=device).manual_seed(SEED)
        return pipeline(batch_size=batch, generator=generator, num_inference_steps=steps, output_type="pt").images

    return timed(device, run)


def run_difflab(unet, name: str, steps: int, batch: int, device: str) -> tuple[float, float, torch.Tensor]:
    scheduler = sampler_scheduler(name, noise_scheduler(ScheduleConfig(kind="ddpm")))

    def run():
        noise, generator = starting_noise(batch, device)
        return diffusers_sample(lambda x, t: unet(x, t).sample, scheduler, noise, steps, generator=generator)

    wall, cpu, images = timed(device, run)
    return wall, cpu, (images / 2 + 0.5).clamp(0, 1)  # the pipelines' own last step, untimed


def compare_pipelines(unet, steps: int, batch: int, rounds: int, device: str) -> None:
    """(b): each pipeline against difflab, interleaved, same images; prints the ratios."""
    pipelines = {name: make_pipeline(name, unet) for name in PIPELINES}
    times = {(name, side): [] for name in PIPELINES for side in ("pipeline", "difflab")}
    for r in range(rounds):
        for name in PIPELINES:
            images = {}
            for side in ("pipeline", "difflab") if r % 2 == 0 else ("difflab", "pipeline"):
                run = (run_pipeline(pipelines[name], steps, batch, device) if side == "pipeline"
                       else run_difflab(unet, name, steps, batch, device))
                times[name, side].append(run[:2])
                images[side] = run[2]
            gap = (images["pipeline"] - images["difflab"]).abs().max().item()
            if gap > 1e-4:
                raise SystemExit(f"{name}: difflab and the pipeline sampled different images (max gap {gap})")
            print(f"  round {r + 1} {name:4s}: pipeline {times[name, 'pipeline'][-1][0] * 1000:7.1f} ms, "
                  f"difflab {times[name, 'difflab'][-1][0] * 1000:7.1f} ms (max |difference| {gap:.1e})",
                  flush=True)
    for name in PIPELINES:
        pipeline, difflab = times[name, "pipeline"], times[name, "difflab"]
        wall = [p[0] / d[0] for p, d in zip(pipeline, difflab)]
        cpu = [p[1] / d[1] for p, d in zip(pipeline, difflab)]
        best = min(p[0] for p in pipeline) / min(d[0] for d in difflab)
        # other processes' load only adds wall time; this process's CPU time leaves out its waits for a core
        print(f"{name.upper()}Pipeline / difflab time: {statistics.median(wall):.3f}x (median of {rounds} rounds; "
              f"best vs best {best:.3f}x, CPU time {statistics.median(cpu):.3f}x; "
              f"{min(d[0] for d in difflab) / steps * 1000:.1f} ms/step in difflab, {device}, batch {batch})")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (N)")
    parser.add_argument("--batch", type=int, default=8, help="images sampled at once")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each measurement")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch, args.rounds) < 1:
        parser.error("--steps, --batch and --rounds must be at least 1")
    from difflab.errors import InputError
    from difflab.jobs.devices import resolve_device

    try:
        args.device = resolve_device(args.device)
    except InputError as error:
        parser.error(f"--device {args.device}: {error}")
    return args


def report_overhead(unet, steps: int, batch: int, rounds: int, device: str) -> None:
    """(a): the median share of the loop outside the UNet, per sampler, without and with a callback."""
    from rich.console import Console
    from rich.table import Table

    overhead = {(name, record): [] for name in SAMPLERS for record in (False, True)}
    for _ in range(rounds):
        for (name, record), shares in overhead.items():
            shares.append(loop_overhead(unet, name, steps, batch, device, record))
    table = Table(title=f"(a) share of the sampling loop outside the UNet ({device}, median of {rounds})")
    for column in ("sampler", "no callback", "recording callback"):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for name in SAMPLERS:
        table.add_row(name, *(f"{statistics.median(overhead[name, r]) * 100:.2f}%" for r in (False, True)))
    Console(highlight=False, width=100).print(table)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers

    device, steps, batch = args.device, args.steps, args.batch
    print(f"torch {torch.__version__} | diffusers {diffusers.__version__} | device {device}: "
          f"{device_name(device)} | threads {torch.get_num_threads()} | python {platform.python_version()}")
    print(f"UNet2DModel (32, 64, 64) x2 layers, {IMAGE_SIZE} px, 1 channel; batch {batch}, {steps} steps, "
          f"{args.rounds} rounds")
    unet = course_unet(device)
    run_difflab(unet, "ddim", 2, batch, device)  # warm-up: first-call allocations and kernel choices
    report_overhead(unet, steps, batch, args.rounds, device)
    compare_pipelines(unet, steps, batch, args.rounds, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
