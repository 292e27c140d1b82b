"""Run directories: the resolved recipe, metrics, samples, checkpoints and the model.

RUN/recipe.toml      resolved recipe (every default written out)
RUN/metrics.jsonl    one JSON object per logged step
RUN/samples/         PNG grids during training and at the end
RUN/model/           save_pretrained output of the trained network
RUN/pipeline/        for DDPM runs: a DDPMPipeline that plain diffusers loads
RUN/lora/            for LoRA runs: only the adapter (safetensors + peft's adapter_config.json)
RUN/checkpoints/     resumable state: weights as safetensors, the rest weights_only-loadable
RUN/summary.json     what ran, where, how long, versions, final metrics

Every write is atomic. Nothing read back from a run is unpickled: weights load
through safetensors, the optimizer state through torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from difflab.errors import InputError
from difflab.files import atomic_write_text
from difflab.recipe import Recipe, load_recipe, save_recipe

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe_path = self.path / "recipe.toml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples = self.path / "samples"
        self.model_dir = self.path / "model"
        self.pipeline_dir = self.path / "pipeline"
        self.lora_dir = self.path / "lora"
        self.checkpoints = self.path / "checkpoints"
        self.summary_path = self.path / "summary.json"

    # ------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | Path, recipe: Recipe) -> RunDir:
        """Make a fresh run folder holding the resolved recipe; an existing non-empty one is refused."""
        run = cls(path)
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise InputError(f"--out {run.path}: already exists and is not empty; "
                             f"choose another folder or continue it with `difflab run --resume {run.path}`")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            # the resolved recipe: a chosen profile is already laid over it, the others don't apply
            save_recipe(recipe.model_copy(update={"profiles": {}}), run.recipe_path)
        except OSError as error:  # read-only, not a folder, no permission, disk full
            raise InputError(f"--out {run.path}: cannot create the run folder ({error.strerror or error}); "
                             f"choose a folder you can write to") from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunDir, Recipe]:
        """An existing run folder and its recipe, for resuming or evaluating."""
        run = cls(path)
        if not run.path.is_dir():
            raise InputError(f"{run.path}: not a run folder (it does not exist)")
        if not run.recipe_path.is_file():
            raise InputError(f"{run.path}: not a run folder (no recipe.toml inside)")
        return run, load_recipe(run.recipe_path)

    # ------------------------------------------------------------ metrics

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines logged after `last_step` (they are redone when a run resumes)."""
        if not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines()
                 if line.strip() and _parsed_step(line) <= last_step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))

    # ------------------------------------------------------------ images, summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str) + "\n")

    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict ({} when there is none yet); a corrupt one is an InputError."""
        if not self.summary_path.exists():
            return {}
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{self.summary_path}: unreadable ({error}); move it aside to write a new one") from None

    def update_summary(self, changes: dict[str, Any]) -> None:
        """Merge `changes` into summary.json (top-level keys replaced), atomically."""
        self.write_summary({**self.read_summary(), **changes})

    # ------------------------------------------------------------ checkpoints

    def latest_checkpoint(self) -> Path:
        """The newest complete checkpoint folder, or a clear InputError when there is none."""
        found = self.list_checkpoints()
        if not found:
            raise InputError(f"{self.path}: no checkpoint to resume from (checkpoints/ is empty or missing)")
        return found[-1]

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))

def _parsed_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable line is dropped along with later ones


def source_kind(path: str | Path) -> str:
    """"pipeline" (model_index.json inside), "checkpoint" (RUN/checkpoints/step_N) or "run"."""
    path = Path(path).expanduser()
    if (path / "model_index.json").is_file():
        return "pipeline"
    return "checkpoint" if (path / "model.safetensors").is_file() and (path / "state.json").is_file() else "run"


def default_run_dir(recipe_path: Path) -> Path:
    """runs/<recipe name>-<date>-<time> under the current folder; -2, -3… when two starts share a second."""
    path = Path("runs") / f"{recipe_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
