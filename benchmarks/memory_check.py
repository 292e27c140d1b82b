r"""Peak CUDA memory of real training steps against the model screen's estimate (jobs/memory.py),
for every built-in recipe at its own batch size.

Each recipe trains a few steps on a Worker (no previews, checkpoints or evaluation); the peak is
the largest `memory` its StepLogged events report (torch.cuda.max_memory_allocated). Printed:
estimate, measured and measured/estimate. The estimate is meant to err high, never far low: a
ratio above 1 means the lab could let a recipe start that then runs out of memory.

Run (on a CUDA machine): python benchmarks/memory_check.py [--steps 3]
Figures to quote, not tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def measured_peak(recipe, device: str) -> int:
    from difflab.jobs.training import TrainingJob
    from difflab.runtime import events
    from difflab.runtime.runs import RunDir
    from difflab.runtime.worker import Worker

    peak = 0
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(device)
        handle = worker.submit(TrainingJob(recipe, RunDir.create(Path(tmp) / "run", recipe)))
        for event in worker.iter_events(handle.job_id):
            if isinstance(event, events.StepLogged):
                peak = max(peak, event.memory_bytes)
            elif isinstance(event, events.JobError):
                raise SystemExit(f"training failed: {event.message}")
        worker.shutdown()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu only checks that the script runs: its figure is the process's resident set")
    args = parser.parse_args()

    import torch

    from difflab.jobs.memory import estimate_training_memory
    from difflab.recipe import load_recipe
    from difflab.runtime.catalog import builtin_recipes
    from difflab.runtime.runs import human_size

    if args.device == "cuda" and not torch.cuda.is_available():
        print("memory_check: no CUDA device here; nothing measured")
        return 0
    print(f"{'recipe':26s} {'batch':>6s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}")
    for builtin in builtin_recipes():
        recipe = load_recipe(builtin.path, [
            f"device='{args.device}'", f"train.max_steps={args.steps}", "train.log_every=1", "train.sample_every=0",
            "train.checkpoint_every=0", "eval.enabled=false", "expect.enabled=false", "sample.num_images=1",
            "sample.steps=1", "sample.trajectory_images=1", "sample.gif=false", "train.init_from=''"])
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        estimate = estimate_training_memory(recipe).total
        peak = measured_peak(recipe, args.device)
        print(f"{builtin.name:26s} {recipe.train.batch_size:6d} {human_size(estimate):>10s} "
              f"{human_size(peak):>10s} {peak / estimate:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
