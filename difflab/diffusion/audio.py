"""Sound ⇄ mel spectrogram ⇄ image, with torchaudio, and how much a round trip loses.

The course turned clips into mel spectrogram images with a diffusers audio pipeline
that is now deprecated; difflab does the same with torchaudio's transforms:
waveform → MelSpectrogram (power) → dB relative to the clip's loudest band, floored at
`top_db` below it → 0..1 image (low frequencies at the bottom), resized to the
model's square when the spectrogram is another shape. Back: image → dB → power →
InverseMelScale (least squares) → GriffinLim (the phase is lost and re-estimated).
WAV files are read and written with soundfile (libsndfile): torchaudio 2.9+ moved
load/save onto TorchCodec, which needs FFmpeg's shared libraries that a plain pip
install here does not have.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
import torchaudio.transforms as T
from pydantic import ValidationError

from difflab.diffusion.render import image_grid, save_png, to_unit
from difflab.errors import InputError
from difflab.files import atomic_write_bytes
from difflab.recipe import AudioConfig

AMIN = 1e-10  # power floor before the log: -100 dB
PEAK = 0.9  # generated clips are written with this peak amplitude (their loudness is not learned)


@dataclass
class RoundTripError:
    """How far sound that went through an image and back is from the original (lower is better)."""

    spectral_convergence: float  # ‖|S| − |Ŝ|‖ / ‖|S|‖ over STFT magnitudes; 0 = identical
    log_spectral_distance: float  # RMS dB difference per frame, averaged over frames


class SpectrogramCodec:
    """Waveforms (N, samples) ⇄ 0..1 spectrogram images (N, 1, size, size) for one [audio] setting."""

    def __init__(self, cfg: AudioConfig, image_size: int) -> None:
        self.cfg, self.image_size = cfg, image_size
        f_max = cfg.top_frequency
        self.mel = T.MelSpectrogram(cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                    f_min=cfg.f_min, f_max=f_max, n_mels=cfg.n_mels, power=2.0)
        # gelsd (SVD) instead of the default gels: many mels on few STFT bins give overlapping
        # low filters, a rank-deficient system that gels refuses; codecs run on the CPU, where gelsd exists.
        self.inverse_mel = T.InverseMelScale(cfg.n_fft // 2 + 1, n_mels=cfg.n_mels, sample_rate=cfg.sample_rate,
                                             f_min=cfg.f_min, f_max=f_max, driver="gelsd")
        self.griffin_lim = T.GriffinLim(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0,
                                        n_iter=cfg.griffin_lim_iters, length=cfg.num_samples)

    @property
    def spectrogram_shape(self) -> tuple[int, int]:
        """(mel bands, frames): the spectrogram before it is fitted to the image."""
        return self.cfg.n_mels, self.cfg.frames

    def to_images(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """0..1 images and each clip's reference level (dB of its loudest band), to undo the scaling."""
        db = 10.0 * torch.log10(self.mel(waves.float()).clamp_min(AMIN))
        # A silent clip's loudest band is the floor itself; keep it at the image's black, not its white.
        ref = db.amax(dim=(-2, -1)).clamp_min(10.0 * math.log10(AMIN) + self.cfg.top_db)
        relative = (db - ref[:, None, None]).clamp_min(-self.cfg.top_db)
        unit = (relative + self.cfg.top_db) / self.cfg.top_db
        return self._fit(unit.flip(-2).unsqueeze(1), (self.image_size, self.image_size)), ref

    def to_waves(self, images: torch.Tensor, ref: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """Waveforms from 0..1 images; without `ref` each clip is scaled to a fixed peak."""
        unit = self._fit(images.float().clamp(0, 1), self.spectrogram_shape).squeeze(1).flip(-2)
        relative = unit * self.cfg.top_db - self.cfg.top_db
        level = ref[:, None, None] if ref is not None else 0.0
        power = AF.DB_to_amplitude(relative + level, ref=1.0, power=1.0)
        with torch.random.fork_rng(devices=[]):  # Griffin-Lim starts from random phases: same seed, same sound
            torch.manual_seed(seed)
            waves = self.griffin_lim(self._linear(power))
        if ref is None:
            waves = waves * (PEAK / waves.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8))
        return waves

    def round_trip(self, waves: torch.Tensor) -> tuple[torch.Tensor, RoundTripError]:
        """Send clips through the image and back; the result and its error against the originals."""
        images, ref = self.to_images(waves)
        back = self.to_waves(images, ref)
        return back, self.error(waves, back)

    def error(self, original: torch.Tensor, rebuilt: torch.Tensor) -> RoundTripError:
        """Spectral convergence and log-spectral distance between two batches of clips."""
        stft = T.Spectrogram(n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length, power=1.0)
        a, b = stft(original.float()), stft(rebuilt.float())
        convergence = (a - b).norm(dim=(-2, -1)) / a.norm(dim=(-2, -1)).clamp_min(1e-8)
        # Both powers are floored top_db below the original's peak: what the image cannot hold
        # (quieter than that) should not count as error.
        floor = a.square().amax(dim=(-2, -1), keepdim=True) * 10 ** (-self.cfg.top_db / 10)
        pa, pb = a.square().maximum(floor).clamp_min(AMIN), b.square().maximum(floor).clamp_min(AMIN)
        distance = (10 * torch.log10(pa / pb)).square().mean(dim=-2).sqrt().mean(dim=-1)
        return RoundTripError(float(convergence.mean()), float(distance.mean()))

    def _linear(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, frames) mel power → (N, n_fft/2+1, frames) STFT power, by least squares."""
        # InverseMelScale solves one least-squares system per batch item; the clips side by side
        # as one (n_mels, N*frames) item share a single factorisation, ~N times faster.
        n, bands, frames = mel.shape
        side_by_side = mel.transpose(0, 1).reshape(1, bands, n * frames)
        return self.inverse_mel(side_by_side).reshape(-1, n, frames).transpose(0, 1)

    @staticmethod
    def _fit(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(images.shape[-2:]) == tuple(shape):
            return images
        return F.interpolate(images, size=shape, mode="bilinear", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------- WAV files


def read_wav(path: Path, sample_rate: int, num_samples: int) -> torch.Tensor:
    """One file as a mono float waveform at `sample_rate`, cut or zero-padded to `num_samples`."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise InputError(f"dataset.path: cannot read audio file {path}: {error}") from None
    if data.shape[0] == 0:
        raise InputError(f"dataset.path: audio file {path} holds no samples (an empty recording)")
    wave = torch.from_numpy(data.mean(axis=1))  # mono: the average of the channels
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return F.pad(wave, (0, num_samples - len(wave)))


def write_wav(path: Path, wave: torch.Tensor, sample_rate: int) -> Path:
    """A 16-bit PCM mono WAV file, written atomically."""
    buffer = io.BytesIO()
    samples = wave.detach().float().cpu().clamp(-1, 1).numpy()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_clips(images: torch.Tensor, value_range: tuple[float, float], cfg: AudioConfig, folder: Path,
                seed: int = 0) -> list[Path]:
    """Generated spectrogram images as folder/clip_NNN.wav plus clip_NNN.png (each spectrogram alone)."""
    unit = to_unit(images.detach().float().cpu(), value_range)
    waves = SpectrogramCodec(cfg, unit.shape[-1]).to_waves(unit, seed=seed)
    written = []
    for i, (wave, image) in enumerate(zip(waves, unit)):
        written.append(write_wav(folder / f"clip_{i:03d}.wav", wave, cfg.sample_rate))
        save_png(image_grid(image[None], (0.0, 1.0), scale=4), folder / f"clip_{i:03d}.png")
    return written


def waveform_points(wave: torch.Tensor | np.ndarray, sample_rate: int, points: int = 400) -> tuple[list, list]:
    """(seconds, amplitude) of a clip's envelope: the peak of each of `points` slices, alternating sign."""
    samples = torch.as_tensor(wave).float()
    chunks = samples[: len(samples) // points * points].view(points, -1) if len(samples) >= points else samples[:, None]
    # a plot column cannot show 20 cycles; the min and max of each slice draw the envelope instead
    peaks = torch.stack([chunks.amax(dim=1), chunks.amin(dim=1)], dim=1).flatten()
    step = chunks.shape[1] / sample_rate
    times = [i // 2 * step + (i % 2) * step / 2 for i in range(len(peaks))]
    return times, peaks.tolist()


# ---------------------------------------------------------------- comparing mel settings


@dataclass
class RoundTripRow:
    """One mel setting's round trip over the same clips (`error` None when the setting is invalid)."""

    setting: dict[str, int]
    spectrogram: tuple[int, int] | None
    error: RoundTripError | None
    problem: str = ""


def griffin_lim_only(cfg: AudioConfig, waves: torch.Tensor) -> RoundTripError:
    """The error of Griffin-Lim alone (full STFT, no mel bands, no image): the floor every row sits on."""
    power = T.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0)(waves)
    codec = SpectrogramCodec(cfg, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return codec.error(waves, codec.griffin_lim(power))


def compare_settings(cfg: AudioConfig, image_size: int, waves: torch.Tensor,
                     settings: list[dict[str, int]]) -> list[RoundTripRow]:
    """The round-trip error of `waves` under each change of `cfg` (n_fft, hop_length, n_mels, ...)."""
    rows = []
    for change in settings:
        try:
            changed = AudioConfig.model_validate({**cfg.model_dump(), **change})
        except ValidationError as error:
            problem = error.errors()[0]["msg"].removeprefix("Value error, ")
            rows.append(RoundTripRow(change, None, None, problem))
            continue
        codec = SpectrogramCodec(changed, image_size)
        rows.append(RoundTripRow(change, codec.spectrogram_shape, codec.round_trip(waves)[1]))
    return rows


@dataclass
class SettingsReport:
    """`difflab audio roundtrip`: the same clips under each mel setting, and Griffin-Lim alone."""

    source: str
    clips: int
    rows: list[RoundTripRow]
    griffin_lim_only: RoundTripError


