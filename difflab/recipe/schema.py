"""The recipe: a typed, validated config tree that round-trips to TOML (no torch here).

Every field has a default, so an empty file is a valid recipe. Unknown keys are
errors (a typo must never fall back to a default silently). A recipe is data:
nothing in it is executed. The Recipe checks what must fit together across its
sections; each section checks its own keys (difflab.recipe.sections).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from difflab.recipe.registry import (
    DEVICES,
    MODEL_KINDS,
    OBJECTIVES,
    SAMPLERS_NEEDING_LOW_SIGMA_MAX,
    SOURCE_CLASSES,
    help_of,
    samplers_of_schedule,
    schedule_refusal,
)
from difflab.recipe.sections import (
    MAX_SEED,
    AudioConfig,
    DatasetConfig,
    EvalConfig,
    ExpectConfig,
    GuidanceConfig,
    InvertConfig,
    LatentConfig,
    ModelConfig,
    SampleConfig,
    ScheduleConfig,
    Section,
    TrainConfig,
)
from difflab.recipe.sigmas import training_sigma_max


class Recipe(Section):
    """A whole experiment: data, corruption, model, training and sampling."""

    description: str = Field("", description="one line shown by `difflab recipes`")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed for weights, data order and noise")
    device: Literal[tuple(DEVICES)] = Field("auto", description=help_of(DEVICES.values()))
    dataset: DatasetConfig = DatasetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    model: ModelConfig = ModelConfig()
    latent: LatentConfig = LatentConfig()
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
        if self.latent.vae:  # the UNet sees the latent, whose size only the VAE knows (latents.py checks it)
            return self
        halvings = self.model.levels() - 1
        factor = 2**halvings
        if self.dataset.image_size % factor:
            levels_key = "model.channels" if self.model.kind == "basic-unet" else "model.block_out_channels"
            raise ValueError(
                f"dataset.image_size = {self.dataset.image_size}: a {self.model.kind} with "
                f"{self.model.levels()} levels ({levels_key}) halves the image {halvings} times, so the size must be "
                f"divisible by {factor} (e.g. {_nearest_multiple(self.dataset.image_size, factor)})")
        return self

    @model_validator(mode="after")
    def _check_process_fits_parts(self) -> Recipe:
        kind, objective, sampler = self.schedule.kind, self.train.objective, self.sample.sampler
        if kind not in OBJECTIVES[objective].schedules:  # only the toy schedule refuses any
            raise ValueError(f"train.objective = '{objective}': the toy schedule has no noise level to "
                             f"predict against; use 'x0', or schedule.kind = 'ddpm'")
        if sampler not in samplers_of_schedule(kind):
            if kind == "toy":
                raise ValueError(f"sample.sampler = '{sampler}': diffusers samplers need schedule.kind = 'ddpm'")
            raise ValueError("sample.sampler = 'toy': the toy sampler belongs to the toy schedule; "
                             f"with schedule.kind = 'ddpm' use one of: {', '.join(samplers_of_schedule(kind))}")
        if kind == "ddpm" and sampler in SAMPLERS_NEEDING_LOW_SIGMA_MAX:
            refusal = _schedule_refusal(self)
            if refusal is not None:  # refused before training, not when sampling after it
                raise ValueError(f"sample.sampler = '{sampler}': {refusal}")
        if kind == "toy" and self.train.loss_weighting != "none":
            raise ValueError("train.loss_weighting = 'min-snr': SNR weighting needs schedule.kind = 'ddpm'")
        if kind == "ddpm" and not MODEL_KINDS[self.model.kind].takes_timestep:
            raise ValueError(f"model.kind = '{self.model.kind}': it takes no timestep, so it cannot learn a DDPM "
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
        class_keys = {"guidance_scale": inv.guidance_scale != 1, "edit_class": inv.edit_class != -1,
                      "edit_guidance_scale": inv.edit_guidance_scale not in (-1, 1),
                      "sweep_guidance": inv.sweep_guidance}
        given = [key for key, changed in class_keys.items() if changed]
        if not classes and not inv.source and given:
            raise ValueError(f"invert.{given[0]} = {getattr(inv, given[0])}: classes and classifier-free guidance "
                             f"need a class-conditional model (model.num_classes > 0); leave it at its default")
        if classes and inv.edit_class >= classes:
            raise ValueError(f"invert.edit_class = {inv.edit_class}: outside 0..{classes - 1} "
                             f"(model.num_classes = {classes}; -1 = each image's own)")
        if inv.edit_loss_guidance and self.guidance.function == "none":
            raise ValueError("invert.edit_loss_guidance = true: set guidance.function (e.g. 'color') to guide with")
        return self

    @model_validator(mode="after")
    def _check_autoencoder(self) -> Recipe:
        if self.model.kind != "autoencoder-kl":
            if self.expect.enabled and self.expect.vae_psnr_above is not None:
                raise ValueError("expect.vae_psnr_above: measures a VAE's reconstructions; it needs "
                                 "model.kind = 'autoencoder-kl'")
            return self
        if self.latent.vae:
            raise ValueError(f"latent.vae = '{self.latent.vae}': a VAE is trained on pixels; latent.vae belongs to "
                             f"the diffusion recipe that uses it")
        if self.dataset.value_range != "-1..1":
            raise ValueError(f"dataset.value_range = '{self.dataset.value_range}': a VAE works in -1..1, as "
                             f"Stable Diffusion's does (pipelines decode to that range); use '-1..1'")
        needs = self.expect.needs_evaluation()
        if needs:
            raise ValueError(f"expect.{needs[0]}: measures generated samples; an autoencoder-kl generates none "
                             f"(use expect.vae_psnr_above)")
        return self

    @model_validator(mode="after")
    def _check_latent(self) -> Recipe:
        if not self.latent.vae:
            return self
        if self.schedule.kind != "ddpm" or self.model.kind != "unet2d":
            raise ValueError(f"latent.vae = '{self.latent.vae}': latent diffusion needs schedule.kind = 'ddpm' "
                             f"and model.kind = 'unet2d' (now '{self.schedule.kind}' and '{self.model.kind}')")
        if self.dataset.value_range != "-1..1":
            raise ValueError(f"dataset.value_range = '{self.dataset.value_range}': a VAE encodes and decodes "
                             f"-1..1 images; use '-1..1' with latent.vae")
        if self.guidance.function != "none":
            raise ValueError(f"guidance.function = '{self.guidance.function}': loss guidance on latents is not "
                             f"built yet; use it in pixel space (latent.vae = '')")
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
    """The registry's schedule_refusal for the recipe's sampler on the schedule its model will train
    with, its sigma_max computed without diffusers (this check runs on the UI thread)."""
    s = recipe.schedule
    sigma_max = training_sigma_max(s.beta_schedule, s.num_train_timesteps, s.beta_start, s.beta_end)
    return schedule_refusal(recipe.sample.sampler, s.beta_schedule, sigma_max,
                            OBJECTIVES[recipe.train.objective].prediction_type)


SECTIONS: dict[str, type[Section]] = {
    "dataset": DatasetConfig, "schedule": ScheduleConfig, "model": ModelConfig,
    "latent": LatentConfig, "train": TrainConfig, "sample": SampleConfig, "guidance": GuidanceConfig, "audio": AudioConfig,
    "eval": EvalConfig, "invert": InvertConfig, "expect": ExpectConfig,
}
