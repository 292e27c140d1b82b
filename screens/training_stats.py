"""What the training screen shows, as data: the loss curve and every figure of the stats line.

Events, a stop, a continue and a single step update one TrainingStats; the screen only draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from difflab.runtime.runs import RunDir
from difflab.runtime.sequences import evenly_spaced

SMOOTHING = 0.1  # EMA weight of each new logged loss: ~10 log intervals of memory, as TensorBoard's 0.9


@dataclass
class LossCurve:
    """Logged losses and their exponential moving average, decimated for a plot of a given width."""

    steps: list[int] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    smooth: list[float] = field(default_factory=list)

    _ema: float = 0.0

    def add(self, step: int, loss: float) -> None:
        self._ema += SMOOTHING * (loss - self._ema)
        self.steps.append(step)
        self.raw.append(loss)
        # debiased as Adam and TensorBoard do: an EMA started at 0 would lag the first losses
        self.smooth.append(self._ema / (1 - (1 - SMOOTHING) ** len(self.raw)))

    def points(self, width: int, log: bool) -> tuple[list[int], list[float], list[float]]:
        """At most ~2 points per column (braille draws 2 per cell): long runs cost the same to draw."""
        picks = evenly_spaced(len(self.steps), max(2 * width, 2))
        scale = (lambda v: math.log10(max(v, 1e-12))) if log else (lambda v: v)
        return ([self.steps[i] for i in picks], [scale(self.raw[i]) for i in picks],
                [scale(self.smooth[i]) for i in picks])


STATES = {
    "idle": "idle: ctrl+r (or Start) trains this recipe into a new folder under runs/",
    "training": "[b]training[/b]",
    "paused": "[b]paused[/b] (n: one step)",
    "stopping": "[b]stopping[/b]: writing a checkpoint…",
    "stopped": "[b]stopped[/b] (c continues)",
    "finished": "[b]finished[/b]",
    "failed": "[b]failed[/b]",
}
"""What the job is doing, as the stats' first words say it."""


@dataclass
class TrainingStats:
    """Every figure the training screen shows: state, step, epoch, loss, lr, img/s, elapsed, ETA,
    memory and the checkpoints. Events, a stop, a continue and a single step all update this one
    object, and the screen draws only from it."""

    state: str = "idle"
    step: int = 0
    total: int = 0
    start_step: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    images_per_sec: float | None = None
    elapsed: float = 0.0
    elapsed_at_start: float = 0.0  # training time before this session (a continued run's checkpoint)
    memory_bytes: int = 0
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)  # the loss's terms over the last log interval (a VAE's)
    vae: dict | None = None  # a finished VAE run's report (summary.json's "vae")

    def eta(self) -> float | None:
        """Seconds left at the average step rate of this session so far; None unless it trains."""
        done = self.step - self.start_step
        session = self.elapsed - self.elapsed_at_start
        if self.state != "training" or not self.total or done <= 0 or session <= 0:
            return None
        return (self.total - self.step) * session / done

    def line(self) -> str:
        state = STATES[self.state]
        if not (self.total or self.step):
            return state
        total = f"{self.total:,}" if self.total else "…"  # a continued run's, until the job says
        loss = f"{self.loss:.4g}" if self.loss is not None else "–"
        lr = f"{self.lr:.3g}" if self.lr is not None else "–"
        rate = f"{self.images_per_sec:,.0f}" if self.images_per_sec is not None else "–"
        eta = self.eta()
        return (f"{state} · step [b]{self.step:,}[/b]/{total} · epoch {self.epoch + 1} · loss [b]{loss}[/b]"
                f" · lr {lr}\n{rate} img/s · elapsed {_clock(self.elapsed)}"
                f"{f' · ETA {_clock(eta)}' if eta is not None else ''}"
                f"{f' · memory {self.memory_bytes / 1e6:,.0f} MB' if self.memory_bytes else ''}"
                f"{_vae_figures(self.vae) if self.vae else ''}")

    def list_checkpoints(self, run: RunDir) -> None:
        """The run's checkpoints on disk (it keeps only the newest train.keep_checkpoints)."""
        self.checkpoints = [(int(path.name.removeprefix("step_")), path) for path in run.list_checkpoints()]

    def continued_from(self, history: list[dict], step: int) -> None:
        """A continued run's figures as its metrics.jsonl had them at the checkpoint's `step`."""
        self.step = self.start_step = step
        for row in history:
            if row.get("step", step + 1) <= step:
                self.epoch = row.get("epoch", self.epoch)
                self.loss, self.lr = row.get("loss", self.loss), row.get("lr", self.lr)
                self.images_per_sec = row.get("img_per_s", self.images_per_sec)
                self.elapsed = self.elapsed_at_start = row.get("elapsed", self.elapsed)


def quality_line(summary: dict) -> str:
    """The finished run's sample quality (the [eval] numbers `difflab run` prints), in one line."""
    if summary.get("eval_skipped"):
        return f"sample quality not measured: {summary['eval_skipped']}"
    quality = summary.get("eval")
    if not quality:
        return ""
    return (f"sample quality ({quality['sampler']}, {quality['steps']} steps): FD norm. "
            f"{quality['frechet_normalised']:.3f} (0 = as close as unseen real images, 1 = as far as noise), "
            f"confidence {quality['confidence']:.3f}, classes {quality['class_entropy_bits']:.2f} of "
            f"{quality['class_entropy_max_bits']:.2f} bits")


def parts_line(parts: dict[str, float]) -> str:
    """The loss's terms (a VAE's reconstruction MSE and KL) as the last log line averaged them."""
    return "loss terms: " + " · ".join(f"{name} [b]{value:.4g}[/b]" for name, value in parts.items())


def vae_lines(summary: dict) -> list[str]:
    """A finished VAE run's report (what `difflab run` prints as a table), a few lines for the log."""
    vae = summary.get("vae")
    if not vae:
        return []
    image, latent = _shape(vae["image_shape"]), _shape(vae["latent_shape"])
    compression = (f"VAE: {image} images -> {latent} latents, {vae['compression_factor']:.3g}x fewer numbers; "
                   f"saved in {vae['folder']}")
    held_out = (f"held-out reconstructions ({vae['held_out_images']} images it never trained on): MSE "
                f"{vae['mse']:.5f}, PSNR {vae['psnr_db']:.2f} dB (on training images {vae['train_psnr_db']:.2f} dB)")
    latents = f"latent mean per channel {_numbers(vae['latent_mean'])}; std {_numbers(vae['latent_std'])}"
    factor = (f"scaling factor {vae['scaling_factor']:.4g} = 1 / {vae['latent_std_all']:.4g}, the std of all "
              f"latent values (SD's VAE: 0.18215); in its config.json")
    return [compression, held_out, latents, factor]


def _vae_figures(vae: dict) -> str:
    """The VAE's figures a person looks for first, as a third line of the stats."""
    return (f"\nVAE: held-out PSNR [b]{vae['psnr_db']:.2f} dB[/b] (MSE {vae['mse']:.5f}) · "
            f"{_shape(vae['latent_shape'])} latents, {vae['compression_factor']:.3g}x fewer numbers · "
            f"scaling factor [b]{vae['scaling_factor']:.4g}[/b]")


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
