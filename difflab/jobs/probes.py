"""The dataset and audio screens' probes: a grid of real samples, and one clip's waveform,
spectrogram and round-trip error with a run's generated clips. Like every probe (the schedule's
and the model's have modules of their own, so the first screen never waits for diffusers) they
run on the worker and return their result in the JobFinished summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile
import torch
from PIL import Image

from difflab.diffusion.audio import SpectrogramCodec, waveform_points
from difflab.diffusion.data import load_dataset
from difflab.diffusion.render import image_grid
from difflab.diffusion.sounds import clip_source
from difflab.recipe import Recipe
from difflab.runtime.sequences import evenly_spaced
from difflab.runtime.worker import JobContext


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


