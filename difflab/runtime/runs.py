"""Run directories: the resolved recipe, metrics, samples, checkpoints and the model.

RUN/recipe.toml      resolved recipe (every default written out)
RUN/metrics.jsonl    one JSON object per logged step
RUN/samples/         PNG grids during training and at the end
RUN/model/           save_pretrained output of the trained network
RUN/pipeline/        for DDPM runs: a pipeline plain diffusers loads (class-conditional: with its pipeline.py)
RUN/lora/            for LoRA runs: only the adapter (safetensors + peft's adapter_config.json)
RUN/checkpoints/     resumable state: weights as safetensors, the rest weights_only-loadable
RUN/summary.json     what ran, where, how long, versions, final metrics
RUN/logs/            train.log_with's tracker files (TensorBoard events, wandb)
RUN/.lock            held (flock) by the one process writing the run; its pid, host and command inside

Every write is atomic. Nothing read back from a run is unpickled: weights load
through safetensors, the optimizer state through torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from difflab.errors import InputError, JobFailed
from difflab.files import HeldLock, atomic_write_text, clean_leftovers, hold_lock
from difflab.recipe import Recipe, load_recipe, save_recipe

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
LOCK_NAME = ".lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# The run folders this process writes, by real path. One process may open a folder it holds
# again (the lab continuing the run it started); another process may not.
_held: dict[str, HeldLock] = {}


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
        self.vae_dir = self.path / "vae"  # a VAE run's trained AutoencoderKL; a latent run's copy of its VAE
        self.checkpoints = self.path / "checkpoints"
        self.summary_path = self.path / "summary.json"
        self.logs = self.path / "logs"

    # ------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | Path, recipe: Recipe) -> RunDir:
        """Make a fresh run folder holding the resolved recipe, locked for this process (see `lock`);
        an existing non-empty folder, or one another process is writing, is refused."""
        run = cls(path)
        if run._has_content() and not (run.path / LOCK_NAME).exists():
            raise run._not_empty()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            run.lock(flag="--out")
            if run._has_content():  # filled by another run between the first look and the lock
                run.release()
                raise run._not_empty()
            # the resolved recipe: a chosen profile is already laid over it, the others don't apply
            save_recipe(recipe.model_copy(update={"profiles": {}}), run.recipe_path)
        except OSError as error:  # read-only, not a folder, no permission, disk full
            run.release()
            raise InputError(f"--out {run.path}: cannot create the run folder ({error.strerror or error}); "
                             f"choose a folder you can write to") from None
        return run

    @classmethod
    def resume(cls, path: str | Path) -> tuple[RunDir, Recipe]:
        """An existing run folder to continue: opened, locked for this process, and cleared of
        the temporary files of writes that were killed (see `clean_leftovers`)."""
        run, recipe = cls.open(path)
        run.lock(flag="--resume")
        run.clean_leftovers()
        return run, recipe

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunDir, Recipe]:
        """An existing run folder and its recipe, for resuming or evaluating."""
        run = cls(path)
        if not run.path.is_dir():
            raise InputError(f"{run.path}: not a run folder (it does not exist)")
        if not run.recipe_path.is_file():
            raise InputError(f"{run.path}: not a run folder (no recipe.toml inside)")
        return run, load_recipe(run.recipe_path)

    def _has_content(self) -> bool:
        """Whether the path is taken: a file, or a folder holding anything besides a lock file."""
        if not self.path.exists():
            return False
        return not self.path.is_dir() or any(p.name != LOCK_NAME for p in self.path.iterdir())

    def _not_empty(self) -> InputError:
        return InputError(f"--out {self.path}: already exists and is not empty; "
                          f"choose another folder or continue it with `difflab run --resume {self.path}`")

    # ------------------------------------------------------------ one writer

    def lock(self, flag: str = "") -> None:
        """Make this process the folder's one writer (flock on RUN/.lock, which names it).

        Another live process holding it is an InputError naming that process; a lock left by a
        killed process was let go by the kernel and is taken over. Released by `release` or
        when the process ends.
        """
        key = os.path.realpath(self.path)
        if key in _held:
            return
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            held = hold_lock(self.path / LOCK_NAME, note)
        except OSError as error:
            raise InputError(f"{flag + ' ' if flag else ''}{self.path}: cannot write into the run folder "
                             f"({error.strerror or error}); choose a folder you can write to") from None
        if isinstance(held, str):
            raise InputError(f"{flag + ' ' if flag else ''}{self.path}: in use by another difflab "
                             f"({_describe_holder(held)}); one process writes a run at a time: wait for it to "
                             f"end or stop it (then `difflab run --resume {self.path}` continues it), "
                             f"or choose another --out")
        _held[key] = held

    def release(self) -> None:
        """Let another process write this run folder (a no-op when this process does not hold it)."""
        held = _held.pop(os.path.realpath(self.path), None)
        if held is not None:
            held.release()

    def clean_leftovers(self) -> list[str]:
        """Remove what killed writes left in the run (`.NAME.<random>.tmp` files and folders) and put
        back a checkpoint caught between its two renames; returns the paths, relative to the run."""
        return [f"{folder.relative_to(self.path)}/{name}".removeprefix("./")
                for folder in (self.path, self.checkpoints, self.samples) for name in clean_leftovers(folder)]

    def restart(self) -> None:
        """Start the run again from step 0 (it has no checkpoint): the metrics logged so far go."""
        self.truncate_metrics(0)

    # ------------------------------------------------------------ metrics

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self._writing("metrics.jsonl"), self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines logged after `last_step` (they are redone when a run resumes)."""
        self.lock()  # a resume's first write: the lab continues a run it opened with RunDir.open
        if not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines()
                 if line.strip() and _parsed_step(line) <= last_step]
        with self._writing("metrics.jsonl"):
            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))

    # ------------------------------------------------------------ images, summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        with self._writing("summary.json"):
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str) + "\n")

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A full disk while writing `what` becomes disk_full's message, not an OSError."""
        try:
            yield
        except OSError as error:
            if error.errno in DISK_FULL:
                raise disk_full(self.path, what) from None
            raise

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


def disk_full(folder: Path, what: str, needed: int | None = None, keep: int | None = None) -> JobFailed:
    """The message for a disk that filled up while writing `what` into `folder`: how much is free,
    roughly how much was needed, and what to change."""
    free = shutil.disk_usage(_existing(folder)).free
    need = f"; it needs about {human_size(needed)}" if needed else ""
    fewer = f"fewer checkpoints (train.keep_checkpoints = {keep} now)" if keep else "fewer checkpoints"
    return JobFailed(f"disk full: cannot write {what} into {folder} ({human_size(free)} free there{need}). Free some "
                     f"space, keep {fewer}, or start the run on another disk (--out); the checkpoints written so "
                     f"far are kept, and `difflab run --resume` continues from the last one once there is room")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_size(n: float) -> str:
    """A byte count for a person: 44.0 KiB, 1.2 GiB, 465.7 TiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _command_line() -> str:
    """This process's command, as a person would type it again."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "difflab" if program in ("__main__.py", "-m", "-c") else program
    return shlex.join([program, *sys.argv[1:]])


def _describe_holder(note: str) -> str:
    """RUN/.lock's note as words: "pid 123 on box, `difflab run …`, since …"."""
    try:
        holder = json.loads(note)
        return (f"pid {holder['pid']} on {holder['host']}, `{holder['command']}`, since {holder['since']}")
    except (ValueError, KeyError, TypeError):
        return "a process that left no note in its .lock file"


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
