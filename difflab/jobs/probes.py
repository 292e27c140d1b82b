"""Small jobs that compute what the lab's screens show: dataset samples, schedule
curves and strips, model reports. They run on the worker like training does, so no
screen touches torch; each returns its result in the JobFinished summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile
import torch
from PIL import Image

from difflab.diffusion.audio import SpectrogramCodec, waveform_points
from difflab.diffusion.data import load_dataset
from difflab.diffusion.models import build_model, denoise, dry_run
from difflab.diffusion.render import image_grid
from difflab.diffusion.schedules import noised_strip, schedule_curves
from difflab.diffusion.sounds import clip_source
from difflab.recipe import Recipe, ScheduleConfig
from difflab.runtime.sequences import evenly_spaced
from difflab.runtime.worker import JobContext


def decimate(xs: list[float], ys: list[float], points: int) -> tuple[list[float], list[float]]:
    """At most `points` evenly spaced samples of a series (plots need ~2 per column, not 1000)."""
    picks = evenly_spaced(len(xs), points)
    return [xs[i] for i in picks], [ys[i] for i in picks]


@dataclass
class DatasetProbe:
    """Load the recipe's dataset; return its summary and a grid of real samples."""

    recipe: Recipe
    recipe_dir: Path | None = None
    count: int = 16
    name: str = "dataset"
    device: str = "cpu"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        data = load_dataset(self.recipe.dataset, self.recipe_dir, self.recipe.seed, self.recipe.audio)
        grid = image_grid(data.images[: self.count], data.value_range, scale=1)
        return "finished", {"summary": data.summary(), "grid": grid}


@dataclass
class ScheduleProbe:
    """Curves of a schedule (and a second one to compare), and one image noised at N timesteps."""

    recipe: Recipe
    compare: ScheduleConfig | None = None
    recipe_dir: Path | None = None
    strip_steps: int = 8
    points: int = 200
    name: str = "schedule"
    device: str = "cpu"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        ddpm = self.recipe.schedule.model_copy(update={"kind": "ddpm"})
        toy = self.recipe.schedule.model_copy(update={"kind": "toy"})
        curves = {"schedule": self._curves(ddpm)}
        if self.compare is not None:
            curves["compare"] = self._curves(self.compare.model_copy(update={"kind": "ddpm"}))
        data = load_dataset(self.recipe.dataset.model_copy(update={"limit": 0}), self.recipe_dir, self.recipe.seed,
                            self.recipe.audio)
        image = data.images[0]
        last = ddpm.num_train_timesteps - 1
        steps = [round(i * last / (self.strip_steps - 1)) for i in range(self.strip_steps)]
        strips = {kind: image_grid(noised_strip(image, cfg, steps, seed=self.recipe.seed,
                                                value_range=data.value_range), data.value_range, nrow=len(steps))
                  for kind, cfg in (("ddpm", ddpm), ("toy", toy))}
        return "finished", {"curves": curves, "timesteps": steps, "strips": strips}

    def _curves(self, cfg: ScheduleConfig) -> dict[str, tuple[list[float], list[float]]]:
        c = schedule_curves(cfg)
        t = c.timesteps.tolist()
        return {name: decimate(t, getattr(c, name).tolist(), self.points)
                for name in ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr")}


@dataclass
class ModelEstimate:
    """A model report plus rough costs of one training step at the recipe's batch."""

    report: Any
    device: str
    step_seconds: float
    memory_bytes: int


@dataclass
class ModelProbe:
    """Dry-run the recipe's model; time a small training step and scale it to the batch."""

    recipe: Recipe
    timing_batch: int = 16
    name: str = "model"
    device: str = "auto"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        report = dry_run(self.recipe, "cpu")
        size, channels = self.recipe.dataset.image_size, self.recipe.dataset.channels
        model = build_model(self.recipe).to(ctx.device)
        per_image = _fastest_step(model, self.timing_batch, channels, size, ctx.device) / self.timing_batch
        batch = self.recipe.train.batch_size
        # Adam keeps two moments per weight, plus the weights and their gradients: 4 copies;
        # activations are roughly 3x the forward FLOPs' outputs, estimated from the block shapes.
        activations = sum(4 * _numel(shape) for _, shape in report.blocks) * 3 * batch
        memory = 4 * 4 * report.parameters + activations
        return "finished", {"estimate": ModelEstimate(report, ctx.device, per_image * batch, memory)}


def _fastest_step(model, batch: int, channels: int, size: int, device: str, repeats: int = 3) -> float:
    """Seconds for one forward+backward pass: the fastest of a few (a busy machine only adds time)."""
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    times = []
    for _ in range(repeats + 1):  # the first pass picks kernels and is not counted
        started = time.perf_counter()
        denoise(model, x, t).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


@dataclass
class DeviceProbe:
    """Which device the worker owns, by name (imports torch on the worker, not the UI)."""

    name: str = "device"
    device: str = "auto"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        label = ctx.device
        if ctx.device.startswith("cuda"):
            label = f"cuda: {torch.cuda.get_device_name(0)}"
        return "finished", {"device": ctx.device, "label": label}


@dataclass
class GeneratedClip:
    """A sampled clip of a run: its WAV file, length and spectrogram image."""

    path: Path
    seconds: float
    spectrogram: Any  # PIL image (the PNG written beside the WAV)


@dataclass
class AudioProbe:
    """One clip of the recipe's sounds: waveform, spectrogram image, round-trip error; a run's generated clips."""

    recipe: Recipe
    recipe_dir: Path | None = None
    clip: int = 0
    run_dir: Path | None = None  # None: the newest run under ./runs that has generated clips
    compare_clips: int = 8
    name: str = "audio"
    device: str = "cpu"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        cfg = self.recipe.audio
        source = clip_source(self.recipe.dataset, cfg, self.recipe_dir, self.recipe.seed)
        index = min(max(self.clip, 0), len(source) - 1)
        codec = SpectrogramCodec(cfg, self.recipe.dataset.image_size)
        picks = [index, *(i for i in evenly_spaced(len(source), self.compare_clips) if i != index)]
        waves = torch.stack([source.clip(i) for i in picks])
        images, _ = codec.to_images(waves[:1])
        rebuilt, _ = codec.round_trip(waves)
        label = source.label(index)
        run_dir = self.run_dir or latest_audio_run(Path.cwd() / "runs")
        return "finished", {
            "source": source.name, "count": len(source), "clip": index,
            "family": source.names[label] if label >= 0 else "(no class)",
            "waveform": waveform_points(waves[0], cfg.sample_rate),
            "spectrogram": image_grid(images, (0.0, 1.0), scale=2), "shape": codec.spectrogram_shape,
            "clip_error": codec.error(waves[:1], rebuilt[:1]), "dataset_error": codec.error(waves, rebuilt),
            "compared": len(picks), "run_dir": run_dir, "generated": generated_clips(run_dir) if run_dir else [],
        }


def latest_audio_run(runs: Path) -> Path | None:
    """The most recently written run directory under `runs` that holds generated clips."""
    folders = [p.parent.parent for p in runs.glob("*/samples/*audio") if p.is_dir()]
    return max(folders, key=lambda p: p.stat().st_mtime, default=None)


def generated_clips(run_dir: Path) -> list[GeneratedClip]:
    """The WAV files sampled into a run (RUN/samples/audio/, and `difflab sample`'s */audio/ folders)."""
    found = []
    for wav in sorted(Path(run_dir).glob("samples/*audio/clip_*.wav")):
        png = wav.with_suffix(".png")
        try:
            info = soundfile.info(str(wav))
            with Image.open(png) as image:
                picture = image.copy()
        except (OSError, RuntimeError):
            continue  # a clip still being written, or one whose PNG was removed
        found.append(GeneratedClip(wav, info.frames / info.samplerate, picture))
    return found


