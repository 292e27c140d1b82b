"""The recipe: a typed, validated config tree that round-trips to TOML.

Every field has a default, so an empty file is a valid recipe. Unknown keys are
errors (a typo must never fall back to a default silently). A recipe is data:
nothing in it is executed.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from difflab.errors import RecipeError


class Section(BaseModel):
    """A recipe section: strict types, no unknown keys."""

    # strict: a TOML string "3" is not an integer; TOML has real types, so use them.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


VALUE_RANGES: dict[str, tuple[float, float]] = {"0..1": (0.0, 1.0), "-1..1": (-1.0, 1.0)}


class DatasetConfig(Section):
    """Where the training images come from and how they are shaped."""

    source: Literal["digits", "shapes", "mnist", "fashion-mnist", "folder", "audio"] = Field(
        "digits", description="digits: scikit-learn's 8x8 digits (embedded); shapes: generated RGB shapes; "
        "mnist / fashion-mnist: torchvision from a local root; folder: any folder of images; "
        "audio: sound clips as mel spectrogram images (generated, or the WAV files in path; see [audio])")
    path: str = Field("", description="root folder for mnist / fashion-mnist / folder, or a folder of WAV files "
                      "for audio (empty: generated clips); relative to the recipe")
    image_size: int = Field(28, gt=0, le=1024, description="images are resized to this many pixels square")
    channels: Literal[1, 3] = Field(1, description="1 = grey, 3 = RGB")
    value_range: Literal["0..1", "-1..1"] = Field(
        "0..1", description="pixel range fed to the model: the from-scratch chapter uses 0..1, DDPM -1..1")
    limit: int = Field(0, ge=0, description="use at most this many images (0 = all)")
    split: Literal["train", "test"] = Field("train", description="which split of mnist / fashion-mnist")
    download: bool = Field(False, description="let torchvision download mnist / fashion-mnist (needs internet)")
    num_images: int = Field(1000, gt=0, le=100_000, description="how many images (shapes) or clips (audio) the generators make")
    flip: bool = Field(False, description="random horizontal flip of each training batch")


class ScheduleConfig(Section):
    """How images are corrupted for training: the toy mix, or DDPM's Gaussian schedule."""

    kind: Literal["toy", "ddpm"] = Field(
        "toy", description="toy: noisy = x*(1-amount) + noise*amount (uniform noise and amount); "
        "ddpm: q(x_t|x_0) = N(sqrt(alpha_bar_t) x_0, (1-alpha_bar_t) I) over timesteps")
    num_train_timesteps: int = Field(1000, gt=1, le=100_000, description="ddpm: number of timesteps")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = Field(
        "linear", description="ddpm: how beta grows over the timesteps (diffusers' names)")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="ddpm: beta at the first timestep")
    beta_end: float = Field(0.02, gt=0, lt=1, description="ddpm: beta at the last timestep")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.beta_start >= self.beta_end:
            raise ValueError(f"schedule.beta_start = {self.beta_start}: must be below "
                             f"schedule.beta_end = {self.beta_end}")
        return self


DOWN_BLOCKS = Literal["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "AttnSkipDownBlock2D",
                      "SkipDownBlock2D"]
UP_BLOCKS = Literal["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"]


class ModelConfig(Section):
    """The network that learns to undo the corruption."""

    kind: Literal["basic-unet", "unet2d"] = Field(
        "basic-unet", description="basic-unet: the course's hand-built UNet (no timestep); "
        "unet2d: diffusers' UNet2DModel (timestep-conditioned)")
    channels: list[int] = Field(
        [32, 64, 64], min_length=2, max_length=6,
        description="basic-unet: channels of each level; one down and one up convolution per level")
    kernel_size: int = Field(5, gt=0, le=15, description="basic-unet: convolution kernel size (odd)")
    block_out_channels: list[int] = Field(
        [32, 64, 64], min_length=1, max_length=8, description="unet2d: output channels of each block")
    layers_per_block: int = Field(2, gt=0, le=8, description="unet2d: ResNet layers per block")
    down_block_types: list[DOWN_BLOCKS] = Field(
        ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"], min_length=1, max_length=8,
        description="unet2d: one down block type per level")
    up_block_types: list[UP_BLOCKS] = Field(
        ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"], min_length=1, max_length=8,
        description="unet2d: one up block type per level")
    norm_num_groups: int = Field(32, gt=0, description="unet2d: groups of GroupNorm")
    attention_head_dim: int = Field(8, gt=0, description="unet2d: channels per attention head")
    dropout: float = Field(0.0, ge=0, lt=1, description="unet2d: dropout in the ResNet blocks")
    num_classes: int = Field(
        0, ge=0, le=10_000, description="unet2d: 0 = unconditional; N = class-conditional through diffusers' "
        "class embedding (num_class_embeds = N + 1: index N is the 'no class' of label dropout and CFG)")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(c <= 0 for c in self.channels):
            raise ValueError(f"model.channels = {self.channels}: every entry must be greater than 0")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size = {self.kernel_size}: must be odd so padding keeps the size")
        if self.kind == "unet2d":
            _check_unet2d(self)
        elif self.num_classes:
            raise ValueError(f"model.num_classes = {self.num_classes}: the basic-unet has no class input; "
                             f"use model.kind = 'unet2d' for a class-conditional model")
        return self

    def levels(self) -> int:
        """How many resolution levels the model has (it halves the image levels-1 times)."""
        return len(self.channels) if self.kind == "basic-unet" else len(self.block_out_channels)


def _check_unet2d(cfg: ModelConfig) -> None:
    n = len(cfg.block_out_channels)
    if len(cfg.down_block_types) != n or len(cfg.up_block_types) != n:
        raise ValueError(
            f"model.block_out_channels has {n} entries but model.down_block_types has "
            f"{len(cfg.down_block_types)} and model.up_block_types {len(cfg.up_block_types)}: "
            f"give one block type of each per level")
    if any(c <= 0 for c in cfg.block_out_channels):
        raise ValueError(f"model.block_out_channels = {cfg.block_out_channels}: every entry must be greater than 0")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(
            f"model.norm_num_groups = {cfg.norm_num_groups}: GroupNorm needs every block's channels divisible "
            f"by it, and {bad} are not (use a divisor of all of {cfg.block_out_channels}, e.g. "
            f"{math.gcd(*cfg.block_out_channels)})")


class TrainConfig(Section):
    """The training loop."""

    objective: Literal["x0", "epsilon", "v_prediction"] = Field(
        "x0", description="x0: predict the clean image; epsilon: predict the noise; "
        "v_prediction: predict v (ddpm only for the last two)")
    loss_weighting: Literal["none", "min-snr"] = Field(
        "none", description="min-snr: weight each timestep's loss by min(SNR, gamma) (ddpm only)")
    snr_gamma: float = Field(5.0, gt=0, description="min-snr: the gamma that caps the SNR weight")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="torch.optim optimizer")
    lr: float = Field(1e-3, gt=0, le=1, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="adamw: decoupled weight decay")
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                         "polynomial"] = Field(
        "constant", description="learning-rate schedule (diffusers' get_scheduler)")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear learning-rate warm-up")
    batch_size: int = Field(128, gt=0, le=65536, description="images per micro-batch (per device)")
    gradient_accumulation: int = Field(1, gt=0, le=1024, description="micro-batches per optimizer step")
    max_grad_norm: float = Field(0.0, ge=0, description="clip gradients to this norm (0 = no clipping)")
    ema: bool = Field(False, description="keep an exponential moving average of the weights (EMAModel)")
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="ema: the largest decay (warms up from 0)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast precision through Accelerate (fp16 needs CUDA)")
    epochs: int = Field(3, gt=0, le=100_000, description="passes over the dataset")
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0 = run all epochs)")
    log_every: int = Field(10, gt=0, description="steps between metrics.jsonl lines (loss averaged over them)")
    sample_every: int = Field(100, ge=0, description="steps between preview grids in samples/ (0 = none)")
    checkpoint_every: int = Field(200, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    preview_images: int = Field(16, gt=0, le=256, description="images in each preview grid")
    init_from: str = Field(
        "", description="start from trained weights: a run folder (its final model, else its latest "
        "checkpoint), a checkpoint folder, a diffusers pipeline or model folder, or a hub id (empty = from scratch)")
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="class-conditional: share of labels replaced by 'no class' so the "
        "same model also learns the unconditional prediction that classifier-free guidance needs")
    lora_rank: int = Field(0, ge=0, le=1024, description="LoRA: rank of the adapters (0 = train every weight)")
    lora_alpha: float = Field(8.0, gt=0, description="LoRA: adapter scale numerator (scale = alpha / rank)")
    lora_targets: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"], min_length=1,
        description="LoRA: names (or name endings) of the layers that get adapters: attention projections "
        "to_q/to_k/to_v/to_out.0, ResNet convolutions conv1/conv2, ...")


class AudioConfig(Section):
    """How sound becomes an image and back: clip length, mel spectrogram, log scale, Griffin-Lim."""

    sample_rate: int = Field(8000, ge=1000, le=192_000, description="samples per second; WAV files are resampled")
    clip_seconds: float = Field(1.0, gt=0, le=60, description="clip length; longer files are cut, shorter padded")
    n_fft: int = Field(1024, ge=16, le=16384, description="STFT window size in samples")
    hop_length: int = Field(256, gt=0, le=16384, description="samples between STFT frames (one image column)")
    n_mels: int = Field(32, ge=4, le=1024, description="mel bands (image rows)")
    f_min: float = Field(0.0, ge=0, description="lowest frequency of the mel bands, Hz")
    f_max: float = Field(0.0, ge=0, description="highest frequency of the mel bands, Hz (0 = sample_rate / 2)")
    top_db: float = Field(80.0, ge=10, le=200, description="dynamic range kept below each clip's loudest band, dB")
    griffin_lim_iters: int = Field(32, gt=0, le=1000, description="Griffin-Lim iterations to recover the phase")

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        nyquist = self.sample_rate / 2
        if self.f_max > nyquist:
            raise ValueError(f"audio.f_max = {self.f_max}: above half the sample rate ({nyquist:g} Hz); "
                             f"use 0 for {nyquist:g} Hz")
        if self.f_min >= self.top_frequency:
            raise ValueError(f"audio.f_min = {self.f_min}: must be below audio.f_max ({self.top_frequency:g} Hz)")
        if self.hop_length > self.n_fft:
            raise ValueError(f"audio.hop_length = {self.hop_length}: must be at most audio.n_fft = {self.n_fft} "
                             f"(frames would skip samples)")
        if self.num_samples <= self.n_fft // 2:
            raise ValueError(f"audio.clip_seconds = {self.clip_seconds}: {self.num_samples} samples is too short for "
                             f"audio.n_fft = {self.n_fft}; use at least {(self.n_fft // 2 + 1) / self.sample_rate:.3g} s")
        empty = _first_empty_mel_band(self)
        if empty is not None:
            raise ValueError(f"audio.n_mels = {self.n_mels}: with n_fft = {self.n_fft} at {self.sample_rate} Hz, mel "
                             f"band {empty} covers no STFT bin; use fewer mels or a larger n_fft")
        return self

    @property
    def top_frequency(self) -> float:
        return self.f_max or self.sample_rate / 2

    @property
    def num_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        """STFT frames of one clip (torch.stft with centred, padded frames)."""
        return 1 + self.num_samples // self.hop_length


def _first_empty_mel_band(cfg: AudioConfig) -> int | None:
    """The first triangular (HTK) mel filter with no STFT bin strictly inside it, as torchaudio builds them."""
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    low, high = mel(cfg.f_min), mel(cfg.top_frequency)
    edges = [700.0 * (10 ** ((low + (high - low) * i / (cfg.n_mels + 1)) / 2595.0) - 1.0) for i in range(cfg.n_mels + 2)]
    bins = [cfg.sample_rate / 2 * k / (cfg.n_fft // 2) for k in range(cfg.n_fft // 2 + 1)]
    for band in range(cfg.n_mels):
        left, right = edges[band], edges[band + 2]
        if not any(left < f < right for f in bins):
            return band
    return None


SAMPLERS = ("toy", "ddpm", "ddim", "pndm", "dpm-solver++", "euler", "euler-ancestral", "heun", "lms", "unipc")
DIFFUSERS_SAMPLERS = SAMPLERS[1:]  # every sampler but the toy one: diffusers' schedulers, for ddpm schedules


def samplers_of_schedule(kind: str) -> tuple[str, ...]:
    """The samplers a model trained on schedule `kind` can be sampled with (checked in Recipe)."""
    return ("toy",) if kind == "toy" else DIFFUSERS_SAMPLERS
# Refused on a schedule whose sigma_max is far beyond EDM's 80, such as the cosine one: the rule and
# the measured reason are difflab.diffusion.samplers.schedule_refusal's; named here so that only recipes with
# one of them pay for building the schedule (diffusers takes seconds to import).
SAMPLERS_NEEDING_LOW_SIGMA_MAX = ("heun",)


class SampleConfig(Section):
    """How images are generated from noise after training."""

    sampler: Literal["toy", "ddpm", "ddim", "pndm", "dpm-solver++", "euler", "euler-ancestral", "heun", "lms",
                     "unipc"] = Field(
        "toy", description="toy: predict x0, move 1/(steps-i) of the way toward it; the others are "
        "diffusers schedulers (ddpm schedule only)")
    steps: int = Field(40, gt=0, le=100_000, description="sampling steps")
    eta: float = Field(0.0, ge=0, le=1, description="ddim: 0 is deterministic, 1 is as noisy as DDPM")
    num_images: int = Field(64, gt=0, le=1024, description="images in the final grid")
    seed: int = Field(0, ge=0, description="seed of the starting noise")
    trajectory_steps: int = Field(5, gt=0, le=1000, description="steps in the step-by-step figure")
    trajectory_images: int = Field(8, gt=0, le=64, description="images in the step-by-step figure and GIF")
    gif: bool = Field(True, description="save the denoising of the trajectory images as samples/denoising.gif")
    class_labels: list[int] = Field(
        [], max_length=1024, description="class-conditional: the class of each image, repeated over the grid "
        "(empty = every class in turn)")
    guidance_scale: float = Field(
        1.0, ge=0, le=100, description="classifier-free guidance, uncond + scale*(cond - uncond): "
        "0 = unconditional, 1 = the class alone, above 1 = pushed further toward the class")


GUIDANCE_FUNCTIONS = ("none", "color", "classifier")  # the names difflab.diffusion.guidance registers

# Classes of the built-in labelled sources (a folder's are known only once it is read).
SOURCE_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "shapes": 3}


class GuidanceConfig(Section):
    """Loss guidance while sampling: nudge x down the gradient of a loss on the predicted clean image."""

    function: Literal["none", "color", "classifier"] = Field(
        "none", description="none; color: mean distance of the pixels to `color` (the course's colour "
        "guidance); classifier: cross-entropy of the dataset's reference classifier toward `target_class`")
    scale: float = Field(40.0, ge=0, le=1e6, description="x <- x - scale * d loss / d x at every step")
    color: list[float] = Field(
        [0.1, 0.9, 0.5], min_length=3, max_length=3, description="color: the target RGB, each 0..1")
    target_class: int = Field(
        0, ge=0, description="classifier: the class (index into the dataset's classes) the reference "
        "classifier should see in every predicted clean image")
    through_model: bool = Field(
        False, description="false: differentiate x0 = f(x, fixed model output) (cheap); true: through the "
        "model too (the course's second variant, better, ~2-3x slower)")

    @model_validator(mode="after")
    def _check(self) -> GuidanceConfig:
        if any(not 0 <= c <= 1 for c in self.color):
            raise ValueError(f"guidance.color = {self.color}: each of red, green, blue must be within 0..1")
        return self


class InvertConfig(Section):
    """DDIM inversion: images back to the noise that makes them, reconstructions and edits (inversion.py)."""

    enabled: bool = Field(False, description="after training (or on `source`'s model), invert `images` and "
                          "write originals, inverted noise, reconstructions, edits and the error table")
    source: str = Field("", description="invert this model instead of training: a run folder or a diffusers "
                        "pipeline folder, relative to the recipe (empty = the model this recipe trains)")
    images: list[int] = Field([0, 1, 2, 3, 4, 5, 6, 7], max_length=256,
                              description="dataset indices of the images to invert")
    image_paths: list[str] = Field([], max_length=256, description="PNG/JPEG files to invert as well, "
                                   "fitted to the model's size (relative to the recipe)")
    steps: int = Field(50, gt=0, le=1000, description="DDIM inversion steps (and as many back)")
    start_step: int = Field(-1, ge=-1, description="edit: how many inverse steps to go back before sampling "
                            "forward with the changes (-1 = all the way to noise, 0 = the original itself)")
    guidance_scale: float = Field(1.0, ge=0, le=100, description="class-conditional: classifier-free guidance "
                                  "on the way back and forward of the reconstruction (1 = the class alone)")
    edit_class: int = Field(-1, ge=-1, description="edit: the class to sample forward with (-1 = each image's own)")
    edit_guidance_scale: float = Field(-1.0, ge=-1, le=100, description="edit: classifier-free guidance scale "
                                       "forward (-1 = guidance_scale)")
    edit_loss_guidance: bool = Field(False, description="edit: nudge the way forward with the recipe's "
                                     "[guidance] function (e.g. color)")
    sweep_steps: list[int] = Field([], max_length=32, description="reconstruction error per step count, e.g. "
                                   "[10, 20, 50, 100]")
    sweep_guidance: list[float] = Field([], max_length=32, description="class-conditional: reconstruction error "
                                        "per guidance scale, e.g. [1, 3, 7]")

    @model_validator(mode="after")
    def _check(self) -> InvertConfig:
        if self.start_step > self.steps:
            raise ValueError(f"invert.start_step = {self.start_step}: at most invert.steps = {self.steps} "
                             f"(-1 = all of them)")
        if self.edit_guidance_scale != -1 and self.edit_guidance_scale < 0:
            raise ValueError(f"invert.edit_guidance_scale = {self.edit_guidance_scale}: -1 (keep) or 0..100")
        bad = [n for n in self.sweep_steps if not 0 < n <= 1000]
        if bad:
            raise ValueError(f"invert.sweep_steps = {self.sweep_steps}: {bad} outside 1..1000")
        bad = [g for g in self.sweep_guidance if not 0 <= g <= 100]
        if bad:
            raise ValueError(f"invert.sweep_guidance = {self.sweep_guidance}: {bad} outside 0..100")
        if self.enabled and not self.images and not self.image_paths:
            raise ValueError("invert.images = []: give dataset indices or invert.image_paths to invert")
        return self


class EvalConfig(Section):
    """Sample quality measured at the end of a run (evaluate.py), against a reference classifier."""

    enabled: bool = Field(True, description="evaluate at the end of `difflab run` (datasets with class "
                          "labels, which train a reference classifier)")
    num_samples: int = Field(256, gt=1, le=100_000, description="images generated for the metrics; "
                             "fewer than 128 gives an unstable Fréchet distance")


class ExpectConfig(Section):
    """What a run must reach; `difflab run` checks each one set here and exits 1 on a failure."""

    enabled: bool = Field(True, description="check these at the end of `difflab run` (false: report nothing)")
    final_loss_below: float | None = Field(None, gt=0, description="the last logged loss must be below this")
    loss_drop_factor_above: float | None = Field(
        None, gt=0, description="the first logged loss divided by the last must be above this")
    frechet_normalised_below: float | None = Field(
        None, description="normalised Fréchet distance (0 = held-out real data, 1 = noise) below this")
    confidence_above: float | None = Field(
        None, ge=0, lt=1, description="mean reference-classifier confidence of samples above this")
    class_entropy_above: float | None = Field(
        None, ge=0, description="entropy (bits) of the samples' predicted-class histogram above this")
    class_accuracy_above: float | None = Field(
        None, ge=0, lt=1, description="class-conditional models: share of samples classified as the "
        "class asked for, above this")
    guidance_loss_ratio_below: float | None = Field(
        None, gt=0, description="[guidance]: the guidance loss of the final samples at guidance.scale divided "
        "by the same at scale 0 (same noise; colour: mean |pixel - colour|), below this")
    reconstruction_psnr_above: float | None = Field(
        None, description="[invert]: mean PSNR (dB) of the DDIM reconstructions above this")
    reconstruction_mse_below: float | None = Field(
        None, gt=0, description="[invert]: mean per-pixel MSE (0..1 pixels) of the DDIM reconstructions below this")

    def needs_evaluation(self) -> list[str]:
        """The expectations set here that only an evaluation can measure."""
        names = ("frechet_normalised_below", "confidence_above", "class_entropy_above", "class_accuracy_above")
        return [name for name in names if self.enabled and getattr(self, name) is not None]


class Recipe(Section):
    """A whole experiment: data, corruption, model, training and sampling."""

    description: str = Field("", description="one line shown by `difflab recipes`")
    seed: int = Field(0, ge=0, description="seed for weights, data order and noise")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, then mps, then cpu")
    dataset: DatasetConfig = DatasetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    audio: AudioConfig = AudioConfig()
    eval: EvalConfig = EvalConfig()
    invert: InvertConfig = InvertConfig()
    expect: ExpectConfig = ExpectConfig()
    # Named partial recipes (`[profiles.smoke.train]` ...) that `--profile NAME` lays over this one.
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named sets of changes, e.g. [profiles.smoke.train]; "
        "chosen with `difflab run RECIPE --profile NAME`")

    @model_validator(mode="after")
    def _check_expectations_are_measured(self) -> Recipe:
        needs = self.expect.needs_evaluation()
        if needs and not self.eval.enabled:
            raise ValueError(f"expect.{needs[0]}: needs the end-of-run evaluation, but eval.enabled = false")
        return self

    @model_validator(mode="after")
    def _check_image_fits_model(self) -> Recipe:
        halvings = self.model.levels() - 1
        factor = 2**halvings
        if self.dataset.image_size % factor:
            raise ValueError(
                f"dataset.image_size = {self.dataset.image_size}: a {self.model.kind} with "
                f"{self.model.levels()} levels halves the image {halvings} times, so the size must be "
                f"divisible by {factor} (e.g. {_nearest_multiple(self.dataset.image_size, factor)})")
        return self

    @model_validator(mode="after")
    def _check_process_fits_parts(self) -> Recipe:
        kind, objective, sampler = self.schedule.kind, self.train.objective, self.sample.sampler
        if kind == "toy" and objective != "x0":
            raise ValueError(f"train.objective = '{objective}': the toy schedule has no noise level to "
                             f"predict against; use 'x0', or schedule.kind = 'ddpm'")
        if sampler not in samplers_of_schedule(kind):
            if kind == "toy":
                raise ValueError(f"sample.sampler = '{sampler}': diffusers samplers need schedule.kind = 'ddpm'")
            raise ValueError("sample.sampler = 'toy': the toy sampler belongs to the toy schedule; "
                             f"with ddpm use one of: {', '.join(DIFFUSERS_SAMPLERS)}")
        if kind == "ddpm" and sampler in SAMPLERS_NEEDING_LOW_SIGMA_MAX:
            refusal = _schedule_refusal(self)
            if refusal is not None:  # refused before training, not when sampling after it
                raise ValueError(f"sample.sampler = '{sampler}': {refusal}")
        if kind == "toy" and self.train.loss_weighting != "none":
            raise ValueError("train.loss_weighting = 'min-snr': SNR weighting needs schedule.kind = 'ddpm'")
        if kind == "ddpm" and self.model.kind == "basic-unet":
            raise ValueError("model.kind = 'basic-unet': it takes no timestep, so it cannot learn a DDPM "
                             "schedule; use model.kind = 'unet2d'")
        if kind == "ddpm" and self.sample.steps > self.schedule.num_train_timesteps:
            raise ValueError(f"sample.steps = {self.sample.steps}: must be between 1 and "
                             f"schedule.num_train_timesteps = {self.schedule.num_train_timesteps}")
        return self

    @model_validator(mode="after")
    def _check_conditioning(self) -> Recipe:
        classes, s = self.model.num_classes, self.sample
        if not classes and s.class_labels:
            raise ValueError(f"sample.class_labels = {s.class_labels}: the model is unconditional; "
                             f"set model.num_classes to train a class-conditional one")
        if not classes and s.guidance_scale != 1:
            raise ValueError(f"sample.guidance_scale = {s.guidance_scale}: classifier-free guidance needs a "
                             f"class-conditional model (model.num_classes > 0); leave it at 1")
        bad = [c for c in s.class_labels if not 0 <= c < classes]
        if bad:
            raise ValueError(f"sample.class_labels = {s.class_labels}: {bad} outside 0..{classes - 1} "
                             f"(model.num_classes = {classes})")
        return self

    @model_validator(mode="after")
    def _check_guidance_and_lora(self) -> Recipe:
        g = self.guidance
        if g.function != "none" and self.schedule.kind != "ddpm":
            raise ValueError(f"guidance.function = '{g.function}': loss guidance nudges a diffusers sampler's "
                             f"steps; it needs schedule.kind = 'ddpm'")
        if self.expect.enabled and self.expect.guidance_loss_ratio_below is not None and (
                g.function == "none" or g.scale == 0):
            raise ValueError(f"expect.guidance_loss_ratio_below: compares samples with and without loss guidance, "
                             f"but guidance.function = '{g.function}' and guidance.scale = {g.scale:g}; "
                             f"name a guidance function with a scale above 0")
        if g.function == "color" and self.dataset.channels != 3:
            raise ValueError("guidance.function = 'color': a colour target needs RGB images "
                             "(dataset.channels = 3)")
        classes = SOURCE_CLASSES.get(self.dataset.source)
        if g.function == "classifier" and classes is not None and g.target_class >= classes:
            raise ValueError(f"guidance.target_class = {g.target_class}: dataset '{self.dataset.source}' has "
                             f"{classes} classes, so it must be between 0 and {classes - 1}")
        if self.train.lora_rank and self.train.ema:
            raise ValueError("train.ema = true: LoRA trains only its small adapters; EMA of the whole model is "
                             "not supported with train.lora_rank > 0")
        return self

    @model_validator(mode="after")
    def _check_inversion(self) -> Recipe:
        inv, classes = self.invert, self.model.num_classes
        needs = [n for n in ("reconstruction_psnr_above", "reconstruction_mse_below")
                 if self.expect.enabled and getattr(self.expect, n) is not None]
        if needs and not inv.enabled:
            raise ValueError(f"expect.{needs[0]}: needs the DDIM inversion, but invert.enabled = false")
        if inv.enabled and self.schedule.kind != "ddpm" and not inv.source:
            raise ValueError("invert.enabled = true: DDIM inversion runs a noise schedule backwards; it needs "
                             "schedule.kind = 'ddpm'")
        if not classes and not inv.source and (inv.guidance_scale != 1 or inv.sweep_guidance or inv.edit_class != -1
                                               or inv.edit_guidance_scale not in (-1, 1)):
            raise ValueError("invert.guidance_scale / edit_class / edit_guidance_scale / sweep_guidance: classes and "
                             "classifier-free guidance need a class-conditional model (model.num_classes > 0)")
        if classes and inv.edit_class >= classes:
            raise ValueError(f"invert.edit_class = {inv.edit_class}: outside 0..{classes - 1} "
                             f"(model.num_classes = {classes}; -1 = each image's own)")
        if inv.edit_loss_guidance and self.guidance.function == "none":
            raise ValueError("invert.edit_loss_guidance = true: set guidance.function (e.g. 'color') to guide with")
        return self

    @model_validator(mode="after")
    def _check_audio_is_grey(self) -> Recipe:
        if self.dataset.source == "audio" and self.dataset.channels != 1:
            raise ValueError(f"dataset.channels = {self.dataset.channels}: a spectrogram image has one channel; "
                             f"use 1 with dataset.source = 'audio'")
        return self


def _nearest_multiple(value: int, factor: int) -> int:
    return max(factor, round(value / factor) * factor)


def _schedule_refusal(recipe: Recipe) -> str | None:
    """samplers.schedule_refusal for the recipe's sampler on the schedule its model will train with."""
    from difflab.diffusion.samplers import schedule_refusal
    from difflab.diffusion.schedules import training_noise_scheduler

    return schedule_refusal(recipe.sample.sampler, training_noise_scheduler(recipe))


SECTIONS: dict[str, type[Section]] = {
    "dataset": DatasetConfig, "schedule": ScheduleConfig, "model": ModelConfig,
    "train": TrainConfig, "sample": SampleConfig, "guidance": GuidanceConfig, "audio": AudioConfig,
    "eval": EvalConfig, "invert": InvertConfig, "expect": ExpectConfig,
}


# ---------------------------------------------------------------- loading


def parse_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a plain dict (as read from TOML) into a Recipe, or raise RecipeError."""
    problems = _problems(data)
    if problems:
        raise RecipeError(source, problems)
    return Recipe.model_validate(data)


def check_profiles(data: dict[str, Any], source: str) -> None:
    """Each profile laid over the recipe as written must validate: a typo in a profile not
    used today is still reported today."""
    if _problems(data):
        return  # the recipe's own problems are reported by parse_recipe
    problems = []
    for name in data.get("profiles", {}):
        problems += [f"profiles.{name}: {line}" for line in _problems(with_profile(data, name, source))]
    if problems:
        raise RecipeError(source, problems)


def _problems(data: dict[str, Any]) -> list[str]:
    try:
        Recipe.model_validate(data)
    except ValidationError as error:
        return [describe_error(e, data) for e in error.errors()]
    return []


def with_profile(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """The recipe dict with profile `name` laid over it.

    Its tables merge key by key, but its [expect] replaces the recipe's whole: a profile
    (a short smoke run, say) states everything it must reach.
    """
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or name not in profiles:
        known = ", ".join(profiles) if isinstance(profiles, dict) and profiles else "none"
        raise RecipeError(source, [f"--profile {name!r}: no [profiles.{name}] in this recipe (its profiles: "
                                   f"{known})"])
    changes = profiles[name]
    if not isinstance(changes, dict):
        raise RecipeError(source, [f"profiles.{name} = {_show(changes)}: must be a table of recipe "
                                   f"sections, e.g. [profiles.{name}.train]"])
    if "profiles" in changes:
        raise RecipeError(source, [f"profiles.{name}.profiles: a profile cannot hold profiles"])
    return _merged(data, changes, replace=("expect",))


def _merged(base: dict[str, Any], changes: dict[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    """`changes` laid over `base`, tables merged key by key, except the tables named in `replace`."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in replace:
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path, overrides: list[str] = (), profile: str | None = None) -> Recipe:
    """Read and validate a recipe file; lay profile `profile` over it, then `key.path=value` overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(str(path), [f"cannot read: {error}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(str(path), [f"not valid TOML: {error}"]) from None
    check_profiles(data, str(path))
    if profile:
        data = with_profile(data, profile, str(path))
    apply_overrides(data, overrides, str(path))
    return parse_recipe(data, str(path))


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> None:
    """Apply `--set key.path=value` strings in place; values are TOML values, bare words are strings."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected key.path=value, e.g. train.lr=2e-4")
            continue
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is not a section")
                break
        else:
            node[parts[-1]] = parse_toml_value(raw.strip())
    if problems:
        raise RecipeError(source, problems)


def parse_toml_value(raw: str) -> Any:
    """Read one TOML value (`3`, `2e-4`, `true`, `[1, 2]`, `"x"`); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def describe_error(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for one pydantic error: key path, bad value, what is allowed."""
    loc = [str(p) for p in error["loc"]]
    key = _key_path(loc)
    if error["type"] == "extra_forbidden":
        return _unknown_key_line(loc)
    if not loc:  # a cross-field check that already names its keys
        return str(error["msg"]).removeprefix("Value error, ")
    message = str(error["msg"]).removeprefix("Value error, ")
    if re.match(r"^[\w.]+ = ", message) or message.startswith(f"{key}."):
        return message  # a section's own check already names its keys and values
    if len(loc) == 1 and loc[0] in SECTIONS and error["type"] in ("model_type", "dict_type"):
        return f"{key} = {_show(_lookup(data, loc))}: must be a table (a [{key}] section)"
    value = _lookup(data, loc)
    allowed = _allowed(loc)
    line = f"{key} = {_show(value)}: {message[0].lower()}{message[1:]}"
    return f"{line} ({allowed})" if allowed and error["type"] != "literal_error" else line


def _key_path(loc: list[str]) -> str:
    """('model', 'channels', '1') -> model.channels[1]"""
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")


def _unknown_key_line(loc: list[str]) -> str:
    key = ".".join(loc)
    model = Recipe if len(loc) == 1 else SECTIONS.get(loc[0])
    if model is None:
        return f"{key}: unknown key"
    allowed = list(model.model_fields)
    hint = difflib.get_close_matches(loc[-1], allowed, n=1)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    where = "at the top level" if len(loc) == 1 else f"in [{loc[0]}]"
    return f"{key}: unknown key; {did_you_mean}allowed {where}: {', '.join(allowed)}"


def _allowed(loc: list[str]) -> str:
    field = _field(loc)
    return f"{field.description}" if field is not None and field.description else ""


def _field(loc: list[str]):
    model: type[BaseModel] = Recipe
    field = None
    for part in loc:
        if model is None or part not in model.model_fields:
            return field if part.isdigit() else None
        field = model.model_fields[part]
        model = field.annotation if isinstance(field.annotation, type) and issubclass(
            field.annotation, BaseModel) else None
    return field


def _lookup(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- saving


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML: every default written out."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if not data.get("profiles"):
        data.pop("profiles", None)  # no profiles: no empty [profiles] table at the end of the file
    return tomlkit.dumps(data)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe atomically."""
    from difflab.files import atomic_write_text

    atomic_write_text(Path(path), recipe_to_toml(recipe))
