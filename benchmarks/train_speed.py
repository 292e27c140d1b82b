r"""Training throughput of the difflab engine against the course's plain loop, side by side.

What it measures
----------------
Images per second of training steps of the from-scratch recipe's model (BasicUNet,
channels [32, 64, 64], kernel 5, 1 channel in and out, batch 128, 28 px digits),
two ways, interleaved in one process so that both see the same machine noise:

* engine: a real ``TrainingJob`` on a real ``Worker`` thread, its event stream
  consumed by the main thread exactly as the headless runner does (a loop over
  ``worker.iter_events``), on the embedded digits dataset resized to 28 px. The
  time is read from the job's own ``StepLogged`` events: the ``elapsed`` between
  the line logged at the warm-up step W and the one at step W + N, so job start-up
  (dataset load, model build) and the end-of-run export and sampling are left out.
* reference: the loop as the course notebook writes it: ``torchvision.datasets.MNIST``
  (the same digits, written as an MNIST IDX root in a temporary folder) with a
  per-item ``ToTensor()``, a ``DataLoader(batch_size=128, shuffle=True)`` with its
  default ``num_workers=0``, the toy corruption, MSE, Adam(lr=1e-3) and
  ``loss.item()`` every step. The same N steps after the same W warm-up steps.

Both train a fresh model from the same seed over the same epoch structure
(ceil(1797 / batch) batches per epoch, the last one partial), so the image counts
of the two windows are equal. Each round runs both (the order alternates), and the
result is the median over rounds of engine img/s / reference img/s.

How to run it
-------------
    python benchmarks/train_speed.py                      # cpu or cuda, whichever is there
    python benchmarks/train_speed.py --device cpu --threads 2 --rounds 5
    python benchmarks/train_speed.py --device cuda --steps 200 --warmup 20

Flags: --steps N (timed steps, default 30), --warmup W (default 5), --rounds R
(default 3), --batch B (default 128), --device cpu|cuda|auto (default auto),
--threads T (torch intra-op threads; default: torch's own choice), --variant KEY=VALUE
(repeatable: also time the engine with these recipe settings, e.g. train.compile=true or
train.mixed_precision='bf16', and print variant/engine: the compile and bf16 speed-ups).

Targets
-------
* 2-core CPU: >= 0.95x. Convolutions are ~95% of a step there, so the engine can at
  best shave the per-item decoding and transforms off the rest; it must not lose
  more than a few percent to its worker thread, events and bookkeeping.
* CUDA: >= 3x, thanks to the dataset resident on the GPU (no per-item transforms,
  no host-to-device copy per batch) and no host sync per step (the loss is read back
  once per log interval instead of ``loss.item()`` every step).

Caveat: the allocator
---------------------
On Linux with glibc, a training step frees and reallocates some 100+ MB of
activations and gradients. On the main thread (the reference, like a notebook)
glibc's main arena hands much of it back to the kernel and faults it in again each
step (~20k minor page faults, ~25 ms a step on the 2-core dev box); on the engine's
worker thread a thread arena does so about half as often (~10k). That is a real
difference users get, but it is not the engine's code: the "faults" column shows it,
and running with the allocator told to keep its memory removes it for both, e.g.

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824 \
        python benchmarks/train_speed.py

which leaves the data path (per-item PIL + ToTensor + collate, ~12 ms a batch of 128)
and the bookkeeping as the only differences between the two.

These are figures to quote (in a README, a changelog, a pull request), not tests: the
script only prints, it asserts nothing and always exits 0 when both loops ran.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import chosen_device, device_name  # noqa: E402  (benchmarks/machine.py, beside this script)

from difflab.diffusion.models import BasicUNet  # noqa: E402
from difflab.runtime import events  # noqa: E402

SEED = 0
IMAGE_SIZE = 28
CHANNELS = (32, 64, 64)
KERNEL_SIZE = 5
LR = 1e-3


# ---------------------------------------------------------------- the digits


def load_digits_28():
    """The embedded digits as difflab loads them: (N, 1, 28, 28) float32 in 0..1."""
    from difflab.diffusion.data import load_dataset
    from difflab.recipe import DatasetConfig

    return load_dataset(DatasetConfig(source="digits", image_size=IMAGE_SIZE))


def write_mnist_root(root: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write uint8 (N, 28, 28) images and labels as an MNIST IDX root (ROOT/MNIST/raw/*-ubyte)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    image_bytes = struct.pack(">IIII", 2051, n, h, w) + images.contiguous().numpy().tobytes()
    label_bytes = struct.pack(">II", 2049, n) + labels.to(torch.uint8).numpy().tobytes()
    for split in ("train", "t10k"):  # torchvision checks all four files exist, even for train=True
        (raw / f"{split}-images-idx3-ubyte").write_bytes(image_bytes)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(label_bytes)


def torchvision_digits(root: Path):
    """The digits as the course loads MNIST: a torchvision dataset with a per-item ToTensor()."""
    import torchvision
    from torchvision.transforms import ToTensor

    data = load_digits_28()
    pixels = (data.images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)
    write_mnist_root(root, pixels, data.labels)
    return torchvision.datasets.MNIST(str(root), train=True, download=False, transform=ToTensor())


def batch_sizes(dataset_size: int, batch: int, first_step: int, steps: int) -> int:
    """Images seen in steps first_step..first_step+steps-1 (0-based) when epochs end with a partial batch."""
    per_epoch = math.ceil(dataset_size / batch)
    return sum(min(batch, dataset_size - (s % per_epoch) * batch) for s in range(first_step, first_step + steps))


# ---------------------------------------------------------------- the engine


def run_engine(device: str, batch: int, warmup: int, steps: int, workdir: Path, tag: str,
               overrides: list[str] = ()) -> dict:
    """One TrainingJob on a fresh Worker; seconds and images between StepLogged at W and at W+N."""
    from difflab.jobs.training import TrainingJob
    from difflab.recipe import apply_overrides, parse_recipe
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    total = warmup + steps
    log_every = math.gcd(warmup, steps)  # divides both W and W+N, so both steps are logged
    data = {
        "seed": SEED, "device": device,
        "dataset": {"source": "digits", "image_size": IMAGE_SIZE, "channels": 1, "value_range": "0..1"},
        "model": {"kind": "basic-unet", "channels": list(CHANNELS), "kernel_size": KERNEL_SIZE},
        "train": {"optimizer": "adam", "lr": LR, "batch_size": batch, "epochs": 100_000, "max_steps": total,
                  "log_every": log_every, "sample_every": 0, "checkpoint_every": 0, "keep_checkpoints": 1},
        "sample": {"steps": 1, "num_images": 1, "trajectory_steps": 1, "trajectory_images": 1},
    }
    apply_overrides(data, list(overrides), "--variant")
    recipe = parse_recipe(data, "<benchmark>")
    run = RunDir.create(workdir / f"engine-{tag}", recipe)
    worker = Worker(device)
    handle = worker.submit(TrainingJob(recipe, run))
    logged: dict[int, float] = {0: 0.0}  # the loop's clock starts at 0 when step 0 begins
    faults: dict[int, int] = {0: minor_faults()}
    final = None
    for event in worker.iter_events(handle.job_id):  # as difflab.cli.report.run_job consumes them
        match event:
            case events.StepLogged():
                logged[event.step] = event.elapsed
                faults[event.step] = minor_faults()  # read on arrival: a few ms late at both ends
            case events.JobError():
                raise SystemExit(f"engine job failed: {event.message}\n{event.traceback}")
            case events.JobFinished():
                final = event
    worker.shutdown()
    if final is None or final.status != "finished" or warmup not in logged or total not in logged:
        raise SystemExit(f"engine job did not log steps {warmup} and {total} (got {sorted(logged)})")
    seconds = logged[total] - logged[warmup]
    images = batch_sizes(final.summary["dataset_size"], batch, warmup, steps)
    return {"seconds": seconds, "images": images, "faults": faults[total] - faults[warmup]}


# ---------------------------------------------------------------- the reference


def run_reference(dataset, device: str, batch: int, warmup: int, steps: int) -> dict:
    """The course notebook's loop: DataLoader over a per-item-transformed dataset, loss.item() each step."""
    from torch.utils.data import DataLoader

    from difflab.diffusion.schedules import corrupt

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(SEED)
    net = BasicUNet(in_channels=1, out_channels=1, channels=CHANNELS, kernel_size=KERNEL_SIZE).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    train_dataloader = DataLoader(dataset, batch_size=batch, shuffle=True)
    losses = []
    step, images, start = 0, 0, None
    net.train()
    while step < warmup + steps:
        for x, _y in train_dataloader:
            x = x.to(device, non_blocking=True)
            amount = torch.rand(x.shape[0], device=device)
            noise = torch.rand_like(x)
            noisy_x = corrupt(x, amount, noise)
            pred = net(noisy_x)
            loss = F.mse_loss(pred, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step > warmup:
                images += x.shape[0]
            if step == warmup:
                sync()
                start, faults = time.perf_counter(), minor_faults()
            if step == warmup + steps:
                break
    sync()
    end = time.perf_counter()
    if start is None:  # warmup 0
        raise SystemExit("internal: reference clock never started")
    return {"seconds": end - start, "images": images, "faults": minor_faults() - faults}


def minor_faults() -> int:
    """Minor page faults of the whole process so far (the allocator's fresh pages show up here)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement (N)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (W, >= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of engine + reference")
    parser.add_argument("--batch", type=int, default=128, help="images per step")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also time the engine with these recipe settings (e.g. train.compile=true, "
                             "train.mixed_precision='bf16') and print variant/engine")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--steps, --warmup, --rounds and --batch must be at least 1")

    from rich.console import Console
    from rich.table import Table

    device = chosen_device(parser, args.device, args.threads)
    console = Console(highlight=False, width=max(Console().width, 110))
    print(f"torch {torch.__version__} | device {device}: {device_name(device)} | "
                  f"threads {torch.get_num_threads()} | python {platform.python_version()}")
    print(f"BasicUNet {list(CHANNELS)} k{KERNEL_SIZE}, batch {args.batch}, {IMAGE_SIZE} px digits; "
                  f"{args.rounds} rounds of {args.steps} timed steps after {args.warmup} warm-up steps")

    rows, variants = [], []
    with tempfile.TemporaryDirectory(prefix="difflab-bench-") as tmp:
        workdir = Path(tmp)
        dataset = torchvision_digits(workdir / "mnist-root")
        for r in range(args.rounds):
            order = ("engine", "reference") if r % 2 == 0 else ("reference", "engine")
            if args.variant:
                order = (*order, "variant") if r % 2 == 0 else ("variant", *order)
            result = {}
            for which in order:
                if which == "engine":
                    result[which] = run_engine(device, args.batch, args.warmup, args.steps, workdir, str(r))
                elif which == "variant":
                    result[which] = run_engine(device, args.batch, args.warmup, args.steps, workdir, f"v{r}",
                                               args.variant)
                else:
                    result[which] = run_reference(dataset, device, args.batch, args.warmup, args.steps)
                res = result[which]
                print(f"  round {r + 1} {which:9s}: {res['images'] / res['seconds']:8.1f} img/s "
                      f"({res['seconds'] / args.steps * 1000:.0f} ms/step)", flush=True)
            rows.append((r + 1, f"{order[0][:3]} first", result["engine"], result["reference"]))
            if args.variant:
                variants.append(result["variant"]["images"] / result["variant"]["seconds"]
                                / (result["engine"]["images"] / result["engine"]["seconds"]))

    table = Table(title=f"training throughput ({device}, batch {args.batch}, {IMAGE_SIZE} px)")
    table.caption = "faults: minor page faults per timed step, whole process (fresh pages from the allocator)"
    for column in ("round", "order", "engine img/s", "ms/step", "faults",
                   "reference img/s", "ms/step", "faults", "ratio"):
        table.add_column(column, justify="right" if column != "order" else "left")
    ratios = []
    for r, order, eng, ref in rows:
        eng_rate, ref_rate = eng["images"] / eng["seconds"], ref["images"] / ref["seconds"]
        ratios.append(eng_rate / ref_rate)
        table.add_row(str(r), order, f"{eng_rate:.1f}", f"{eng['seconds'] / args.steps * 1000:.0f}",
                      f"{eng['faults'] / args.steps:.0f}", f"{ref_rate:.1f}",
                      f"{ref['seconds'] / args.steps * 1000:.0f}", f"{ref['faults'] / args.steps:.0f}",
                      f"{ratios[-1]:.3f}x")
    console.print(table)
    print(f"engine/reference throughput: {statistics.median(ratios):.2f}x "
          f"(median of {args.rounds} rounds, {device}, batch {args.batch}, {IMAGE_SIZE} px)")
    if variants:
        print(f"variant/engine throughput with {' '.join(args.variant)}: {statistics.median(variants):.2f}x "
              f"(median of {args.rounds} rounds; the variant's warm-up W absorbs a compile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
