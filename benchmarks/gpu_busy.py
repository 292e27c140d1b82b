r"""How busy the GPU is while the engine trains: the proof that the data path does not starve it.

NVML's utilisation counter (the share of each sampling period in which a kernel ran) is read
every 20 ms on a side thread while a real TrainingJob of the from-scratch recipe's model (batch
128 by default) trains on a Worker; the samples between the StepLogged of warm-up step W and the
last step are averaged. Target: at least 80%.

Run (on a CUDA machine; nvidia-ml-py provides pynvml):
    python benchmarks/gpu_busy.py [--steps 300] [--warmup 20] [--batch 128] [--set KEY=VALUE ...]
Figures to quote, not tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from difflab.runtime import events  # noqa: E402


def sample_utilisation(stop: threading.Event, samples: list[tuple[float, int]], period: float = 0.02) -> None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.is_set():
        samples.append((time.perf_counter(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        time.sleep(period)
    pynvml.nvmlShutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--recipe", default="from-scratch", help="a built-in recipe's name or a recipe file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from difflab.jobs.training import TrainingJob
    from difflab.recipe import load_recipe
    from difflab.runtime.catalog import find_recipe
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    if not torch.cuda.is_available():
        print("gpu_busy: no CUDA device here; nothing measured")
        return 0
    total = args.warmup + args.steps
    recipe = load_recipe(find_recipe(args.recipe), [
        "device='cuda'", f"train.batch_size={args.batch}", "train.epochs=100000", f"train.max_steps={total}",
        "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0", "eval.enabled=false",
        "expect.enabled=false", "sample.num_images=1", "sample.steps=1", "sample.trajectory_images=1",
        "sample.gif=false", *args.overrides])
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_utilisation, args=(stop, samples), daemon=True)
    sampler.start()
    window: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker("cuda")
        handle = worker.submit(TrainingJob(recipe, RunDir.create(Path(tmp) / "run", recipe)))
        for event in worker.iter_events(handle.job_id):
            if isinstance(event, events.StepLogged) and event.step in (args.warmup, total):
                window[event.step] = time.perf_counter()
            elif isinstance(event, events.JobError):
                raise SystemExit(f"training failed: {event.message}")
        worker.shutdown()
    stop.set()
    sampler.join()
    busy = [value for at, value in samples if window.get(args.warmup, 0) <= at <= window.get(total, 0)]
    if not busy:
        print("gpu_busy: no samples inside the timed window (too few steps?)")
        return 1
    print(f"GPU busy while training {args.recipe} at batch {args.batch} {' '.join(args.overrides)}: "
          f"mean {statistics.mean(busy):.0f}%, median {statistics.median(busy):.0f}% over {len(busy)} NVML samples "
          f"(steps {args.warmup}..{total}; target >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
