"""Sampling sweeps: one recipe value varied row by row, in one labelled grid (an XYZ plot).

Every row starts from the same noise, so a row differs from the next only by the
swept value: a guidance scale, a sampler, a step count, any `[sample]` or
`[guidance]` key, the class of a class-conditional model (one row per class: the
class grid), or the checkpoint of a run (how samples improved during training).
Each value goes through the recipe's validation, so a bad one is reported like a
bad recipe value. Beside the PNG a JSON file keeps per-row numbers: the mean colour
and, when the recipe names a guidance function, its loss on the final images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from difflab.diffusion.conditioning import run_class_names
from difflab.diffusion.generate import generate
from difflab.diffusion.guidance import GUIDANCE
from difflab.diffusion.loading import checkpoint_setup, pipeline_setup, run_setup
from difflab.diffusion.render import labelled_rows, save_png, to_unit
from difflab.errors import InputError
from difflab.files import atomic_write_text
from difflab.jobs.sampling import SampleSource, SamplingProgress
from difflab.recipe import apply_overrides, parse_recipe, parse_toml_value
from difflab.runtime import events
from difflab.runtime.runs import CHECKPOINT_PATTERN, RunDir
from difflab.runtime.worker import JobContext


@dataclass(frozen=True)
class Sweep:
    """What varies: a recipe key path (or 'class' / 'checkpoint') and its values, one row each."""

    key: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return self.key.removeprefix("sample.")


def parse_sweep(text: str) -> Sweep:
    """`guidance_scale=0,1,3,7` (a bare name is a [sample] key), `guidance.scale=0,40`, `class=all`,
    `checkpoint=all` or `checkpoint=4,8,final`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    values = tuple(parse_toml_value(v.strip()) for v in raw.split(",") if v.strip())
    if not sep or not key or not values:
        raise InputError(f"--sweep {text!r}: expected KEY=V1,V2,..., e.g. guidance_scale=0,1,3,7, "
                         f"guidance.scale=0,20,40, class=all or checkpoint=all")
    if "." not in key and key not in ("class", "checkpoint"):
        key = f"sample.{key}"
    return Sweep(key, values)


class SweepJob:
    """Sample one row per swept value from a run or pipeline; write one labelled grid and its numbers."""

    name = "sweep"

    def __init__(self, source: SampleSource, out: Path, sweep: Sweep, overrides: list[str] = (),
                 device: str = "auto") -> None:
        if sweep.key == "checkpoint" and source.run_dir is None:
            raise InputError("--sweep checkpoint=...: checkpoints belong to a run; give a run directory")
        self.source, self.out, self.sweep = source, Path(out), sweep
        self.overrides, self.device = list(overrides), device

    @classmethod
    def of_step_through(cls, step_through, sweep: str) -> SweepJob:
        """The sampling screen's sweep: `sweep` is the CLI's text (`guidance_scale=0,1,3,7`,
        `class=all`, `checkpoint=all`); source, folder and settings are the step-through job's."""
        job = step_through
        source = SampleSource(run_dir=job.run_dir, pipeline=job.pipeline)
        return cls(source, job.samples_dir, parse_sweep(sweep), job.overrides(job.samplers[0]))

    def run(self, ctx: JobContext) -> tuple[str, dict]:
        started = time.perf_counter()
        rows = self._rows(ctx.device)
        base = rows[0][1]
        s = base.recipe.sample
        ctx.emit(events.JobStarted(ctx.job_id, self.name, ctx.device, s.steps * len(rows), 0, self.out))
        images, stats = [], []
        for i, (label, setup) in enumerate(rows):
            row = setup.recipe.sample
            progress = SamplingProgress(ctx, row.steps, s.steps * len(rows), offset=i * s.steps)
            images.append(generate(setup, row.num_images, row.steps, progress).cpu())
            stats.append({"label": label, **_row_numbers(images[-1], setup)})
            if ctx.control.stop_requested:
                return "stopped", {}
        stem = f"sweep-{self.sweep.name}-{s.sampler}-{s.steps}steps-seed{s.seed}"
        title = f"{self.sweep.name} sweep: {s.sampler}, {s.steps} steps, seed {s.seed}"
        figure = labelled_rows(images, [r["label"] for r in stats], base.value_range, title)
        path = save_png(figure, self.out / f"{stem}.png")
        _write_json(self.out / f"{stem}.json", {"key": self.sweep.key, "rows": stats})
        ctx.emit(events.PreviewReady(ctx.job_id, s.steps * len(rows), figure, path))
        return "finished", {"status": "finished", "job": "sweep", "samples": str(path), "key": self.sweep.key,
                            "rows": stats, "elapsed_s": round(time.perf_counter() - started, 3)}

    # ------------------------------------------------------------ rows

    def _rows(self, device: str) -> list[tuple[str, Any]]:
        """(label, sampling setup) per row; the model is loaded once unless checkpoints are swept."""
        if self.sweep.key == "checkpoint":
            return _checkpoint_setups(Path(self.source.run_dir), list(self.sweep.values), self.overrides, device)
        if self.source.pipeline:
            base = pipeline_setup(self.source.pipeline, self.overrides, device)
        else:
            base = run_setup(Path(self.source.run_dir), self.overrides, device)
        if self.sweep.key == "class":
            return _class_rows(base, self.sweep.values, self.source.run_dir)
        return [(f"{self.sweep.name} = {_show(v)}", _with(base, [f"{self.sweep.key}={_toml(v)}"]))
                for v in self.sweep.values]


def _class_rows(base, values, run_dir: Path | None) -> list[tuple[str, Any]]:
    classes = base.recipe.model.num_classes
    if not classes:
        raise InputError("--sweep class / --grid classes: the model is unconditional (model.num_classes = 0)")
    chosen = list(range(classes)) if list(values) == ["all"] else list(values)
    names = run_class_names(run_dir, classes) if run_dir else [str(c) for c in range(classes)]
    bad = [c for c in chosen if not isinstance(c, int) or not 0 <= c < classes]
    if bad:
        raise InputError(f"--sweep class={','.join(map(str, values))}: {bad} not classes of this model "
                         f"(0..{classes - 1}, or all)")
    rows = []
    for c in chosen:
        setup = _with(base, [f"sample.class_labels=[{_toml(c)}]"])
        rows.append((f"{c}: {names[c]}" if names[c] != str(c) else str(c), setup))
    return rows


def _checkpoint_setups(run_dir: Path, values: list, overrides: list[str], device: str) -> list[tuple[str, Any]]:
    run, _ = RunDir.open(run_dir)
    found = {int(CHECKPOINT_PATTERN.match(p.name).group(1)): p for p in run.list_checkpoints()}
    has_final = (run.model_dir / "config.json").is_file()
    wanted = [*found, *(["final"] if has_final else [])] if values == ["all"] else values
    rows = []
    for value in wanted:
        if value == "final" and has_final:
            rows.append(("final", run_setup(run_dir, overrides, device)))
        elif isinstance(value, int) and value in found:
            rows.append((f"step {value}", checkpoint_setup(found[value], overrides, device)))
        else:
            have = ", ".join([*(str(s) for s in found), *(["final"] if has_final else [])]) or "none"
            raise InputError(f"--sweep checkpoint={value}: {run.checkpoints} has no such checkpoint "
                             f"(there are: {have}; or use checkpoint=all)")
    if not rows:
        raise InputError(f"--sweep checkpoint=all: {run.path} has no checkpoints and no final model yet")
    return rows


def _with(base, overrides: list[str]):
    """A copy of `base` whose recipe has `overrides` applied and validated (same model, same device)."""
    data = base.recipe.model_dump(mode="json")
    apply_overrides(data, overrides, "--sweep")
    return replace(base, recipe=parse_recipe(data, "--sweep"))  # blamed on --sweep, not on a --set


def _row_numbers(images: torch.Tensor, setup) -> dict:
    """Per-row figures: the mean of each channel (0..1) and the recipe's guidance loss, if it names one."""
    numbers = {"mean": [round(v, 4) for v in to_unit(images, setup.value_range).mean(dim=(0, 2, 3)).tolist()]}
    cfg = setup.recipe.guidance
    if cfg.function != "none":
        function = GUIDANCE[cfg.function]
        loss = float(function.build(setup.recipe, setup.value_range, "cpu", setup.data_dir)(images.cpu().float()))
        numbers["guidance_loss"] = round(loss / len(images) if function.summed else loss, 5)  # per image
    return numbers


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
