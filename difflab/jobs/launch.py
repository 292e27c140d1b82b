"""How the lab's screens start jobs without importing torch: a Launch names a job by where
it lives, and the worker imports that module (torch, diffusers) only when the job runs.

The screens run on the UI thread, where `import torch` (≈2 s) and `import diffusers`
(≈3.5 s) would freeze the lab; so they import this module and never a job's own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import JobContext


@dataclass
class Launch:
    """A job to build and run on the worker: `job` is "module:factory" under difflab.jobs."""

    job: str
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "job"
    device: str = "auto"

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        module, _, factory = self.job.partition(":")
        build = reduce(getattr, factory.split("."), importlib.import_module(f"difflab.jobs.{module}"))
        return build(**self.settings).run(ctx)


def training(recipe: Recipe, run_dir: RunDir, recipe_dir: Path | None = None, resume: bool = False) -> Launch:
    """Train `recipe` into `run_dir` (resume: from its newest checkpoint)."""
    return Launch("training:TrainingJob", {"recipe": recipe, "run": run_dir, "recipe_dir": recipe_dir,
                                           "resume": resume}, "train", recipe.device)


def sweep(step_through, text: str) -> Launch:
    """A sampling sweep (`guidance_scale=0,1,3,7`, `class=all`, ...) over a step-through job's source."""
    return Launch("sweep:SweepJob.of_step_through", {"step_through": step_through, "sweep": text}, "sweep")


def inversion(recipe: Recipe, source: Path, recipe_dir: Path | None = None) -> Launch:
    """DDIM inversion of `recipe.invert` on a run or pipeline folder, with its grids as pictures."""
    return Launch("inversion:FolderInversionJob", {"recipe": recipe, "source": source, "recipe_dir": recipe_dir},
                  "invert")


def probe(job: str, **settings: Any) -> Launch:
    """One of the screens' probes, as "module:Class" under difflab.jobs (e.g. "probes:DatasetProbe")."""
    return Launch(job, settings, job.partition(":")[2].removesuffix("Probe").lower())
