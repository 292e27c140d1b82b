"""Sound clips for the audio chapter: generated families of sounds, or a folder of WAV files.

The generated clips need no network: tones, chords, chirps, percussive hits and short
melodies, each with one of a few timbres (band-limited additive synthesis, so nothing
aliases above half the sample rate). Clip i depends only on (seed, i), so a screen can
draw one clip without making the thousand before it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflab.diffusion.audio import (
    SettingsReport,
    compare_settings,
    griffin_lim_only,
    read_wav,
)
from difflab.diffusion.folders import class_of_file, resolve_data_path, seeded_subset
from difflab.errors import InputError
from difflab.recipe import AudioConfig, DatasetConfig
from difflab.runtime.sequences import evenly_spaced

FAMILIES = ["tone", "chord", "chirp", "hit", "melody"]
TIMBRES = {  # harmonic k's amplitude, k = 1, 2, 3, ...
    "sine": lambda k: 1.0 if k == 1 else 0.0,
    "square": lambda k: 1.0 / k if k % 2 else 0.0,
    "saw": lambda k: 1.0 / k,
    "soft": lambda k: 0.6 ** (k - 1),
}
AUDIO_SUFFIXES = (".wav",)
PENTATONIC = [0, 2, 4, 7, 9]


@dataclass
class GeneratedClips:
    """`count` clips, one family after another (balanced classes), the same for the same seed."""

    count: int
    sample_rate: int
    num_samples: int
    seed: int = 0
    names = FAMILIES
    name = "generated sounds"

    def __len__(self) -> int:
        return self.count

    def label(self, index: int) -> int:
        return index % len(FAMILIES)

    def clip(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        t = np.arange(self.num_samples) / self.sample_rate
        wave = _SYNTHS[FAMILIES[self.label(index)]](rng, t, self.sample_rate)
        peak = np.abs(wave).max()
        return torch.from_numpy((wave / max(peak, 1e-8) * rng.uniform(0.3, 0.9)).astype(np.float32))


@dataclass
class WavFolder:
    """The WAV files under a folder (first-level subfolders are classes), read on demand."""

    files: list[Path]
    labels: list[int]
    names: list[str]
    sample_rate: int
    num_samples: int
    name: str

    def __len__(self) -> int:
        return len(self.files)

    def label(self, index: int) -> int:
        return self.labels[index]

    def clip(self, index: int) -> torch.Tensor:
        return read_wav(self.files[index], self.sample_rate, self.num_samples)


def clip_source(dataset: DatasetConfig, audio: AudioConfig, base_dir: Path | None,
                seed: int = 0) -> GeneratedClips | WavFolder:
    """The recipe's clips: the WAV files under dataset.path for an audio source with a path, else generated."""
    if dataset.source != "audio" or not dataset.path:
        return GeneratedClips(dataset.num_images, audio.sample_rate, audio.num_samples, seed)
    root = resolve_data_path(dataset, base_dir)
    if not root.is_dir():
        raise InputError(f"dataset.path = {dataset.path!r}: folder of WAV files not found (resolved to {root})")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).parts)
    if not files:
        raise InputError(f"dataset.path = {dataset.path!r}: no {', '.join(AUDIO_SUFFIXES)} files found in {root}")
    keep = seeded_subset(len(files), dataset.limit, seed)
    if keep is not None:
        files = [files[i] for i in keep.tolist()]
    owners = [class_of_file(f, root) for f in files]
    names = sorted({o for o in owners if o is not None})
    labels = [names.index(o) if o is not None else -1 for o in owners]
    return WavFolder(files, labels, names, audio.sample_rate, audio.num_samples, f"wav:{root}")


def load_waves(source: GeneratedClips | WavFolder) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip as one (N, samples) tensor, and the labels."""
    waves = torch.stack([source.clip(i) for i in range(len(source))])
    return waves, torch.tensor([source.label(i) for i in range(len(source))], dtype=torch.int64)


# ---------------------------------------------------------------- synthesis


def _note(rng: np.random.Generator, low: int = 45, high: int = 81) -> float:
    """A random equal-tempered pitch between MIDI notes `low` and `high`, in Hz."""
    return _hz(int(rng.integers(low, high)))


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _harmonics(freq: np.ndarray | float, t: np.ndarray, timbre: str, sample_rate: int,
               phase: np.ndarray | None = None) -> np.ndarray:
    """A periodic tone: harmonics of `freq` below half the sample rate, weighted by the timbre."""
    phase = 2 * np.pi * freq * t if phase is None else phase
    top = np.max(freq)
    wave = np.zeros_like(t)
    for k in range(1, 32):
        if k * top >= sample_rate / 2:
            break
        wave += TIMBRES[timbre](k) * np.sin(k * phase)
    return wave


def _envelope(t: np.ndarray, start: float, attack: float, decay: float) -> np.ndarray:
    """Silence until `start`, a linear attack, then an exponential decay (time constant `decay`)."""
    local = t - start
    rise = np.clip(local / attack, 0.0, 1.0)
    return np.where(local < 0, 0.0, rise * np.exp(-np.maximum(local - attack, 0.0) / decay))


def _timbre(rng: np.random.Generator) -> str:
    return list(TIMBRES)[int(rng.integers(len(TIMBRES)))]


def _tone(rng, t, sr):
    env = _envelope(t, rng.uniform(0, 0.1) * t[-1], 0.01, rng.uniform(0.2, 1.5) * t[-1])
    return env * _harmonics(_note(rng), t, _timbre(rng), sr)


def _chord(rng, t, sr):
    root = int(rng.integers(45, 72))
    third = 4 if rng.random() < 0.5 else 3  # major or minor
    timbre = _timbre(rng)
    env = _envelope(t, rng.uniform(0, 0.1) * t[-1], 0.02, rng.uniform(0.3, 1.5) * t[-1])
    return env * sum(_harmonics(_hz(root + step), t, timbre, sr) for step in (0, third, 7))


def _chirp(rng, t, sr):
    start, end = _note(rng, 40, 90), _note(rng, 40, 90)
    freq = start * (end / start) ** (t / t[-1])  # an exponential sweep: a straight line on the mel axis
    phase = 2 * np.pi * np.cumsum(freq) / sr
    env = _envelope(t, 0.0, 0.02, 2 * t[-1])
    return env * _harmonics(freq, t, rng.choice(["sine", "soft"]), sr, phase)


def _hit(rng, t, sr):
    wave = np.zeros_like(t)
    for start in np.sort(rng.uniform(0, 0.7, size=int(rng.integers(1, 4)))) * t[-1]:
        decay = rng.uniform(0.02, 0.12)
        body = np.sin(2 * np.pi * rng.uniform(50, 200) * t) * _envelope(t, start, 0.002, decay * 1.5)
        noise = rng.standard_normal(len(t)) * _envelope(t, start, 0.001, decay * 0.5) * rng.uniform(0.2, 1.0)
        wave += body + noise
    return wave


def _melody(rng, t, sr):
    notes = int(rng.integers(3, 6))
    root, timbre = int(rng.integers(50, 70)), _timbre(rng)
    length = t[-1] / notes
    wave = np.zeros_like(t)
    for i in range(notes):
        pitch = root + PENTATONIC[int(rng.integers(len(PENTATONIC)))] + 12 * int(rng.integers(0, 2))
        env = _envelope(t, i * length, 0.01, length * 0.5) * (t < (i + 1) * length)
        wave += env * _harmonics(_hz(pitch), t, timbre, sr)
    return wave


_SYNTHS = {"tone": _tone, "chord": _chord, "chirp": _chirp, "hit": _hit, "melody": _melody}


def measure_settings(recipe, base_dir: Path | None, n_ffts: list[int], hops: list[int], mels: list[int],
                     clips: int) -> SettingsReport:
    """Round-trip `clips` of the recipe's sounds (spread over them) under every n_fft × hop × n_mels."""
    source = clip_source(recipe.dataset, recipe.audio, base_dir, recipe.seed)
    waves = torch.stack([source.clip(i) for i in evenly_spaced(len(source), max(1, clips))])
    settings = [{"n_fft": f, "hop_length": h, "n_mels": m} for f, h, m in itertools.product(n_ffts, hops, mels)]
    rows = compare_settings(recipe.audio, recipe.dataset.image_size, waves, settings)
    return SettingsReport(source.name, len(waves), rows, griffin_lim_only(recipe.audio, waves))
