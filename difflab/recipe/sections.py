"""The recipe's sections: one typed model per TOML table, each checking its own keys.

Strict types and no unknown keys (a typo must never fall back to a default silently).
The allowed names of every named choice, and their help, come from difflab.recipe.registry;
checks across sections are the Recipe's (difflab.recipe.schema).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from difflab.recipe.registry import (
    BETA_SCHEDULES,
    GUIDANCE_FUNCTIONS,
    GUIDANCE_FUNCTIONS_BY_NAME,
    MODEL_KINDS,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULE_KINDS,
    SOURCES,
    VALUE_RANGES,
    help_of,
    sampler_help,
)

# torch.Generator.manual_seed takes a signed 64-bit integer; a larger seed passed validation and
# then died in the run with "Overflow when unpacking long long".
MAX_SEED = 2**63 - 1


class Section(BaseModel):
    """A recipe section: strict types, no unknown keys."""

    # strict: a TOML string "3" is not an integer; TOML has real types, so use them. TOML also has
    # inf and nan, which no setting means: every float must be finite.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class DatasetConfig(Section):
    """Where the training images come from and how they are shaped."""

    source: Literal[tuple(SOURCES)] = Field("digits", description=help_of(SOURCES.values()))
    path: str = Field("", description="root folder for mnist / fashion-mnist / folder / imagefolder, a folder of "
                      "WAV files for audio (empty: generated clips), or for hub a dataset name (owner/name), a "
                      "save_to_disk folder or a folder of parquet files; relative to the recipe")
    image_size: int = Field(28, gt=0, le=1024, description="images are resized to this many pixels square")
    channels: Literal[1, 3] = Field(1, description="1 = grey, 3 = RGB")
    value_range: Literal[tuple(VALUE_RANGES)] = Field(
        "0..1", description="pixel range fed to the model: the from-scratch chapter uses 0..1, DDPM -1..1")
    limit: int = Field(0, ge=0, description="use at most this many images (0 = all)")
    split: str = Field("train", min_length=1, description="which split: train or test for mnist / fashion-mnist; "
                       "for hub and imagefolder any split the dataset has, with slicing (e.g. 'train[:500]')")
    image_column: str = Field("image", min_length=1, description="hub / imagefolder: the column of images")
    label_column: str = Field("", description="hub / imagefolder: the column of class labels (empty = none)")
    caption_column: str = Field("", description="hub / imagefolder: the column of captions (empty = none)")
    download: bool = Field(False, description="let torchvision download mnist / fashion-mnist (needs internet)")
    num_images: int = Field(1000, gt=0, le=100_000, description="how many images (shapes) or clips (audio) the generators make")
    flip: bool = Field(False, description="random horizontal flip of each training batch")

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.source in ("mnist", "fashion-mnist") and self.split not in ("train", "test"):
            raise ValueError(f"dataset.split = {self.split!r}: {self.source} has the splits 'train' and 'test'")
        return self


class ScheduleConfig(Section):
    """How images are corrupted for training: the toy mix, or DDPM's Gaussian schedule."""

    kind: Literal[tuple(SCHEDULE_KINDS)] = Field("toy", description=help_of(SCHEDULE_KINDS.values()))
    num_train_timesteps: int = Field(1000, gt=1, le=100_000, description="ddpm: number of timesteps")
    beta_schedule: Literal[tuple(BETA_SCHEDULES)] = Field(
        "linear", description=f"ddpm: how beta grows over the timesteps: {help_of(BETA_SCHEDULES.values())}")
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

    kind: Literal[tuple(MODEL_KINDS)] = Field("basic-unet", description=help_of(MODEL_KINDS.values()))
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
    latent_channels: int = Field(4, gt=0, le=64, description="autoencoder-kl: channels of the latent (SD: 4)")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(c <= 0 for c in self.channels):
            raise ValueError(f"model.channels = {self.channels}: every entry must be greater than 0")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size = {self.kernel_size}: must be odd so padding keeps the size")
        if self.kind == "unet2d":
            _check_unet2d(self)
        elif self.kind == "autoencoder-kl":
            _check_autoencoder(self)
        elif self.num_classes:
            raise ValueError(f"model.num_classes = {self.num_classes}: the basic-unet has no class input; "
                             f"use model.kind = 'unet2d' for a class-conditional model")
        return self

    def levels(self) -> int:
        """How many resolution levels the model has (it halves the image levels-1 times)."""
        return len(self.channels) if self.kind == "basic-unet" else len(self.block_out_channels)


def _check_groups(cfg: ModelConfig) -> None:
    if any(c <= 0 for c in cfg.block_out_channels):
        raise ValueError(f"model.block_out_channels = {cfg.block_out_channels}: every entry must be greater than 0")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(
            f"model.norm_num_groups = {cfg.norm_num_groups}: GroupNorm needs every block's channels divisible "
            f"by it, and {bad} are not (use a divisor of all of {cfg.block_out_channels}, e.g. "
            f"{math.gcd(*cfg.block_out_channels)})")


def _check_autoencoder(cfg: ModelConfig) -> None:
    _check_groups(cfg)
    if cfg.num_classes:
        raise ValueError(f"model.num_classes = {cfg.num_classes}: an autoencoder-kl has no class input; leave it at 0")


def _check_unet2d(cfg: ModelConfig) -> None:
    n = len(cfg.block_out_channels)
    if len(cfg.down_block_types) != n or len(cfg.up_block_types) != n:
        raise ValueError(
            f"model.block_out_channels has {n} entries but model.down_block_types has "
            f"{len(cfg.down_block_types)} and model.up_block_types {len(cfg.up_block_types)}: "
            f"give one block type of each per level")
    _check_groups(cfg)
    # diffusers gives an attention block channels // attention_head_dim heads: zero heads divide by zero
    attended = [c for c, kind in zip(cfg.block_out_channels, cfg.down_block_types) if "Attn" in kind]
    if attended and cfg.attention_head_dim > min(attended):
        raise ValueError(
            f"model.attention_head_dim = {cfg.attention_head_dim}: more than the {min(attended)} channels of an "
            f"attention block, which would have no head; use at most {min(attended)} (e.g. 8)")


class TrainConfig(Section):
    """The training loop."""

    objective: Literal[tuple(OBJECTIVES)] = Field("x0", description=help_of(OBJECTIVES.values()))
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
    compile: bool = Field(
        False, description="torch.compile the model (inductor): slower first steps, faster after; "
        "checkpoints are the same either way")
    epochs: int = Field(3, gt=0, le=100_000, description="passes over the dataset")
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0 = run all epochs)")
    log_every: int = Field(10, gt=0, description="steps between metrics.jsonl lines (loss averaged over them)")
    sample_every: int = Field(100, ge=0, description="steps between preview grids in samples/ (0 = none)")
    checkpoint_every: int = Field(200, ge=0, description="steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    preview_images: int = Field(16, gt=0, le=256, description="images in each preview grid")
    log_with: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="also log loss, learning rate, img/s and previews through Accelerate's trackers into "
        "RUN/logs/ (tensorboard: pip install 'difflab[tensorboard]'; wandb: pip install wandb)")
    init_from: str = Field(
        "", description="start from trained weights: a run folder (its final model, else its latest "
        "checkpoint), a checkpoint folder, a diffusers pipeline or model folder, or a hub id (empty = from scratch)")
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="class-conditional: share of labels replaced by 'no class' so the "
        "same model also learns the unconditional prediction that classifier-free guidance needs")
    kl_weight: float = Field(
        1e-6, ge=0, le=1, description="autoencoder-kl: weight of the KL term beside the reconstruction MSE "
        "(SD's VAE: 1e-6; larger keeps latents nearer N(0, 1) but blurs)")
    lora_rank: int = Field(0, ge=0, le=1024, description="LoRA: rank of the adapters (0 = train every weight)")
    lora_alpha: float = Field(8.0, gt=0, description="LoRA: adapter scale numerator (scale = alpha / rank)")
    lora_targets: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"], min_length=1,
        description="LoRA: names (or name endings) of the layers that get adapters: attention projections "
        "to_q/to_k/to_v/to_out.0, ResNet convolutions conv1/conv2, ...")


class LatentConfig(Section):
    """Diffusion in a VAE's latent space (Stable Diffusion's first half): encode once, diffuse, decode."""

    vae: str = Field(
        "", description="the VAE whose latents the UNet learns (empty = pixel space): a run folder that trained "
        "one (RUN/vae), an AutoencoderKL folder, a pipeline folder with vae/, a hub id, or a built-in VAE recipe's "
        "name, optionally with ':PROFILE' (e.g. 'vae-shapes'), trained once and cached")
    scaling_factor: float = Field(
        0.0, ge=0, le=100, description="latents are multiplied by this to reach unit variance (0 = the VAE's own "
        "config value, which difflab measures when it trains one; SD's VAE: 0.18215)")
    encode_batch_size: int = Field(64, gt=0, le=4096, description="images per VAE pass when the dataset is "
                                   "encoded (once, before training)")


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
            raise ValueError(f"audio.n_mels = {self.n_mels}: mel band {empty} covers no STFT bin with audio.n_fft = "
                             f"{self.n_fft} at audio.sample_rate = {self.sample_rate} Hz between audio.f_min = "
                             f"{self.f_min:g} and audio.f_max = {self.top_frequency:g} Hz; use fewer mels, a larger "
                             f"n_fft or a wider f_min..f_max")
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




class SampleConfig(Section):
    """How images are generated from noise after training."""

    sampler: Literal[SAMPLERS] = Field("toy", description=sampler_help())
    steps: int = Field(40, gt=0, le=100_000, description="sampling steps")
    eta: float = Field(0.0, ge=0, le=1, description="ddim: 0 is deterministic, 1 is as noisy as DDPM")
    num_images: int = Field(64, gt=0, le=1024, description="images in the final grid")
    compile: bool = Field(
        False, description="torch.compile the model for sampling (on CUDA with CUDA graphs: "
        "mode 'reduce-overhead'); pays off over many steps")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the starting noise")
    trajectory_steps: int = Field(5, gt=0, le=1000, description="steps in the step-by-step figure")
    trajectory_images: int = Field(8, gt=0, le=64, description="images in the step-by-step figure and GIF")
    gif: bool = Field(True, description="save the denoising of the trajectory images as samples/denoising.gif")
    class_labels: list[int] = Field(
        [], max_length=1024, description="class-conditional: the class of each image, repeated over the grid "
        "(empty = every class in turn)")
    guidance_scale: float = Field(
        1.0, ge=0, le=100, description="classifier-free guidance, uncond + scale*(cond - uncond): "
        "0 = unconditional, 1 = the class alone, above 1 = pushed further toward the class")


class GuidanceConfig(Section):
    """Loss guidance while sampling: nudge x down the gradient of a loss on the predicted clean image."""

    function: Literal[GUIDANCE_FUNCTIONS] = Field(
        "none", description=help_of(GUIDANCE_FUNCTIONS_BY_NAME.values()))
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
                             "fewer than 128 gives an unstable Fréchet distance (autoencoder-kl: images held out "
                             "of training to measure its reconstructions, at most a fifth of the dataset)")


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
    vae_psnr_above: float | None = Field(
        None, description="autoencoder-kl: PSNR (dB) of the VAE's reconstructions of held-out images above this")

    def needs_evaluation(self) -> list[str]:
        """The expectations set here that only an evaluation can measure."""
        names = ("frechet_normalised_below", "confidence_above", "class_entropy_above", "class_accuracy_above")
        return [name for name in names if self.enabled and getattr(self, name) is not None]
