"""Every named choice a recipe can make, written once, with its rules and one line of help.

The recipe schema's allowed values, the CLI's choices and help, the screens' lists, the
README's tables (checked by a test) and the sampling code's per-sampler settings all read
these tables. Plain data: no torch, no diffusers (diffusers' scheduler classes are named
here as strings; difflab.diffusion.samplers maps them to the classes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar


class Choice(NamedTuple):
    """A named value of one recipe key and what it means."""

    name: str
    help: str


ChoiceT = TypeVar("ChoiceT")


def by_name(*choices: ChoiceT) -> dict[str, ChoiceT]:
    """The choices keyed by name, in the order written (the order lists and messages use)."""
    return {choice.name: choice for choice in choices}


def help_of(choices: Iterable[Any]) -> str:
    """'name: help; name: help': a recipe field's description."""
    return "; ".join(f"{choice.name}: {choice.help}" for choice in choices)


# ---------------------------------------------------------------- schedules

SCHEDULE_KINDS = by_name(
    Choice("toy", "noisy = x*(1-amount) + noise*amount (uniform noise and amount)"),
    Choice("ddpm", "q(x_t|x_0) = N(sqrt(alpha_bar_t) x_0, (1-alpha_bar_t) I) over timesteps"),
)

# diffusers' DDPMScheduler names; difflab.recipe.sigmas rebuilds each one's betas as it does
BETA_SCHEDULES = by_name(
    Choice("linear", "beta from beta_start to beta_end in equal steps (DDPMScheduler's default)"),
    Choice("scaled_linear", "sqrt(beta) in equal steps (latent diffusion's)"),
    Choice("squaredcos_cap_v2", "alpha_bar along a squared cosine, each beta capped at 0.999 (better for small "
                                "images; beta_start and beta_end unused)"),
    Choice("sigmoid", "beta along a sigmoid from beta_start to beta_end (GeoDiff's)"),
)


# ---------------------------------------------------------------- models and objectives

class ModelKind(NamedTuple):
    """A network a recipe can train (model.kind)."""

    name: str
    help: str
    takes_timestep: bool  # without it the model cannot learn a DDPM schedule


MODEL_KINDS = by_name(
    ModelKind("basic-unet", "the course's hand-built UNet (no timestep)", takes_timestep=False),
    ModelKind("unet2d", "diffusers' UNet2DModel (timestep-conditioned)", takes_timestep=True),
    ModelKind("autoencoder-kl", "diffusers' AutoencoderKL: the VAE that compresses images to latents and back "
              "(trained with reconstruction + KL; no schedule)", takes_timestep=False),
)


class Objective(NamedTuple):
    """What the model learns to predict (train.objective)."""

    name: str
    help: str
    prediction_type: str  # diffusers' name for it
    schedules: tuple[str, ...]  # the schedule kinds it can be trained on


OBJECTIVES = by_name(
    Objective("x0", "predict the clean image", "sample", ("toy", "ddpm")),
    Objective("epsilon", "predict the noise (ddpm only)", "epsilon", ("ddpm",)),
    Objective("v_prediction", "predict v = sqrt(alpha_bar) noise - sqrt(1-alpha_bar) x0 (ddpm only)",
              "v_prediction", ("ddpm",)),
)


def objective_of_prediction(prediction_type: str) -> str:
    """The recipe objective diffusers calls `prediction_type` ('sample' is 'x0')."""
    return next((o.name for o in OBJECTIVES.values() if o.prediction_type == prediction_type), prediction_type)


# ---------------------------------------------------------------- data

class Source(NamedTuple):
    """Where training images come from (dataset.source)."""

    name: str
    help: str
    classes: int | None = None  # classes of a built-in labelled source; None: unlabelled or known once read


SOURCES = by_name(
    Source("digits", "scikit-learn's 8x8 digits (embedded)", classes=10),
    Source("shapes", "generated RGB shapes", classes=3),
    Source("mnist", "MNIST through torchvision from a local root", classes=10),
    Source("fashion-mnist", "Fashion-MNIST through torchvision from a local root", classes=10),
    Source("folder", "any folder of images"),
    Source("imagefolder", "a folder in the imagefolder layout (datasets' loader; metadata.jsonl for labels and "
                          "captions, as diffusers' text-to-image example reads)"),
    Source("hub", "a Hugging Face dataset through the datasets library: a hub name in path (from the local "
                  "cache offline), or a folder written by save_to_disk, or parquet files"),
    Source("audio", "sound clips as mel spectrogram images (generated, or the WAV files in path; see [audio])"),
)
SOURCE_CLASSES = {s.name: s.classes for s in SOURCES.values() if s.classes is not None}

VALUE_RANGES: dict[str, tuple[float, float]] = {"0..1": (0.0, 1.0), "-1..1": (-1.0, 1.0)}

DEVICES = by_name(
    Choice("auto", "cuda, then mps, then cpu"),
    Choice("cpu", "the processor"),
    Choice("cuda", "an NVIDIA GPU"),
    Choice("mps", "Apple's GPU"),
)


# ---------------------------------------------------------------- guidance

# difflab.diffusion.guidance registers a builder under each name but 'none'
GUIDANCE_FUNCTIONS_BY_NAME = by_name(
    Choice("none", "no loss guidance"),
    Choice("color", "mean distance of every pixel to guidance.color (the course's colour guidance)"),
    Choice("classifier", "cross-entropy of the dataset's reference classifier on x0 toward guidance.target_class"),
)
GUIDANCE_FUNCTIONS = tuple(GUIDANCE_FUNCTIONS_BY_NAME)


# ---------------------------------------------------------------- samplers

X0Clip = Literal["none", "step", "thresholding", "loop"]
"""Where the predicted x0 is clipped to the training scheduler's clip_sample_range: nowhere, in the
sampler's own step (clip_sample), by its dynamic thresholding, or by difflab's sampling loop."""

# DDPM's training config clips the predicted x0 to -1..1 (clip_sample, diffusers' default), and
# with the cosine schedule that clip carries the sampler: at t near T, sqrt(alpha_bar) is 5e-5, so
# x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) turns a small error in eps into thousands.
# DDPM's step clips and uses the clipped x0 throughout. DDIM clips x0 but by default keeps the
# model's own eps beside it, an x_{t-1} matching neither (measured on the digits model, cosine,
# CFG 3: FD norm. rose from 0.23 at 10 steps to 0.73 at 50), so the loop asks it for the eps of the
# clipped x0. DPM-Solver++ and UniPC have no clip_sample; their thresholding with sample_max_value =
# clip_sample_range is the same clip. Euler, Euler-ancestral, LMS and PNDM have no clip of x0 in
# diffusers 0.42: without one they sampled the same model near noise (FD norm. 0.96-1.28, PNDM 0.52
# at 50 steps); with the loop's clip, as DDIM does (0.08-0.11 at 10-50 steps).


class Sampler(NamedTuple):
    """A sampler a recipe can name (sample.sampler) and the rules that come with it."""

    name: str
    help: str
    schedules: tuple[str, ...]  # the schedule kinds whose models it samples
    scheduler_class: str = ""  # diffusers' scheduler class ('' for the toy sampler)
    x0_clip: X0Clip = "step"
    options: Mapping[str, object] = MappingProxyType({})  # extra scheduler settings (read-only)
    unsupported_predictions: frozenset[str] = frozenset()  # diffusers 0.42 has no step for these
    needs_low_sigma_max: bool = False  # refused where the schedule's sigma_max is far beyond EDM's 80


def _diffusers(name: str, help: str, scheduler_class: str, x0_clip: X0Clip, **rules) -> Sampler:
    return Sampler(name, help, ("ddpm",), scheduler_class, x0_clip, **rules)


SAMPLERS_BY_NAME = by_name(
    Sampler("toy", "predict x0, move 1/(steps-i) of the way toward it (the from-scratch chapter's)", ("toy",),
            x0_clip="none"),
    _diffusers("ddpm", "DDPM's ancestral step, one per timestep, as the model was trained", "DDPMScheduler", "step"),
    _diffusers("ddim", "deterministic at eta 0: good images in far fewer steps", "DDIMScheduler", "step"),
    # PNDM's Runge-Kutta warm-up costs 8 extra model calls (34 for 25 steps); DDPM-trained pipelines skip it.
    _diffusers("pndm", "pseudo linear multistep (PLMS), steps + 1 model calls", "PNDMScheduler",
               "loop", options={"skip_prk_steps": True}, unsupported_predictions=frozenset({"sample"})),
    # lambda_min_clipped = -5.1 is diffusers' setting for cosine (DeepFloyd IF's scheduler config): it
    # skips the last few timesteps, whose log-SNR is below -5.1; a linear schedule's never is (-5.06 at 999).
    _diffusers("dpm-solver++", "second-order multistep ODE solver", "DPMSolverMultistepScheduler", "thresholding",
               options={"algorithm_type": "dpmsolver++", "lambda_min_clipped": -5.1}),
    _diffusers("euler", "Euler steps of the ODE in sigma", "EulerDiscreteScheduler", "loop"),
    _diffusers("euler-ancestral", "Euler steps with fresh noise at each", "EulerAncestralDiscreteScheduler", "loop",
               unsupported_predictions=frozenset({"sample"})),
    # Heun clips x0 in its own step, yet on the cosine schedule its second-order step from sigma
    # 20,291 overshoots: FD norm. 0.62-0.77 at 10-50 steps on the digits model (cosine, CFG 3).
    _diffusers("heun", "second-order Heun steps, 2 * steps - 1 model calls", "HeunDiscreteScheduler", "step",
               needs_low_sigma_max=True),
    _diffusers("lms", "linear multistep in sigma", "LMSDiscreteScheduler", "loop"),
    _diffusers("unipc", "predictor-corrector multistep", "UniPCMultistepScheduler", "thresholding"),
)
SAMPLERS = tuple(SAMPLERS_BY_NAME)
DIFFUSERS_SAMPLERS = tuple(s.name for s in SAMPLERS_BY_NAME.values() if s.scheduler_class)
SAMPLERS_NEEDING_LOW_SIGMA_MAX = tuple(s.name for s in SAMPLERS_BY_NAME.values() if s.needs_low_sigma_max)

# The Euler-type samplers start from sigma = sqrt((1 - alpha_bar) / alpha_bar) at the last timestep:
# 157 on the linear schedule, 20,291 on the cosine one (its beta capped at 0.999 drops alpha_bar 1000x
# in the last step). Where that is over ten times EDM's sigma_max of 80, a sampler that needs a low one
# is refused.
EDM_SIGMA_MAX = 80.0


def samplers_of_schedule(kind: str) -> tuple[str, ...]:
    """The samplers a model trained on schedule `kind` can be sampled with (checked in Recipe)."""
    return tuple(s.name for s in SAMPLERS_BY_NAME.values() if kind in s.schedules)


def sampler_help() -> str:
    """The sampler names grouped by the schedule they sample, for help texts."""
    return "; ".join(f"{', '.join(samplers_of_schedule(kind))} ({kind} schedule)" for kind in SCHEDULE_KINDS)


def samplers_of_prediction(prediction_type: str, low_sigma_max: bool = True) -> list[str]:
    """The diffusers samplers that can step a model predicting `prediction_type`; with
    low_sigma_max False, only those that also sample a schedule with a high sigma_max."""
    return [name for name in DIFFUSERS_SAMPLERS
            if prediction_type not in SAMPLERS_BY_NAME[name].unsupported_predictions
            and (low_sigma_max or not SAMPLERS_BY_NAME[name].needs_low_sigma_max)]


def prediction_refusal(sampler: str, prediction_type: str) -> str | None:
    """Why `sampler` cannot step a model predicting `prediction_type`, or None where it can."""
    if prediction_type not in SAMPLERS_BY_NAME[sampler].unsupported_predictions:
        return None
    return (f"cannot sample a model trained with train.objective = {objective_of_prediction(prediction_type)!r} "
            f"(diffusers has no {prediction_type!r} step for it); "
            f"use one of: {', '.join(samplers_of_prediction(prediction_type))}")


def schedule_refusal(sampler: str, beta_schedule: str, sigma_max: float, prediction_type: str) -> str | None:
    """Why `sampler` cannot sample a model trained on a schedule starting at `sigma_max`, or None
    where it can: the one rule of the recipe check (sample.sampler) and of the sampling code."""
    if not SAMPLERS_BY_NAME[sampler].needs_low_sigma_max or sigma_max <= 10 * EDM_SIGMA_MAX:
        return None
    usable = samplers_of_prediction(prediction_type, low_sigma_max=False)
    return (f"cannot sample a model trained with schedule.beta_schedule = {beta_schedule!r}: "
            f"it starts at sigma = {sigma_max:,.0f} (sqrt(alpha_bar) = {(1 + sigma_max**2) ** -0.5:.1e}), where "
            f"its steps overshoot even with the predicted x0 clipped; use one of: {', '.join(usable)}")


# ---------------------------------------------------------------- the book's chapters

class Chapter(NamedTuple):
    """A chapter of the book the lab follows (从零开始学扩散模型), by the book's number."""

    number: int
    title: str  # the book's own
    english: str
    course: str  # the part of the Hugging Face diffusion-models course it follows
    recipes: tuple[str, ...] = ()  # the built-in recipes that do its experiments

    @property
    def label(self) -> str:
        """'Ch. N', as recipe descriptions and help name it."""
        return f"Ch. {self.number}"


# Learners hold the book, so every label uses its numbers (the course's units differ).
CHAPTERS = {chapter.number: chapter for chapter in (
    Chapter(3, "从零开始做扩散模型", "Diffusion from scratch", "unit 1, notebook 2", ("from-scratch", "unet2d-digits")),
    Chapter(4, "Diffusers实战", "DDPM with diffusers", "unit 1, notebook 1", ("ddpm-rgb-32",)),
    Chapter(5, "微调和引导", "Fine-tuning and guidance", "unit 2",
            ("class-conditional-digits", "finetune", "finetune-pretrained", "guidance-color")),
    Chapter(6, "Stable Diffusion", "Stable Diffusion", "unit 3", ("vae-shapes", "latent-shapes", "pixel-shapes")),
    Chapter(7, "DDIM反转", "DDIM inversion", "unit 4", ("ddim-inversion",)),
    Chapter(8, "音频扩散模型", "Audio diffusion", "unit 4", ("audio-spectrogram",)),
    Chapter(9, "ControlNet 与 LoRA", "ControlNet, LoRA, DreamBooth", "unit 3 extras", ("lora-finetune",)),
)}
RECIPE_CHAPTERS = {recipe: chapter.number for chapter in CHAPTERS.values() for recipe in chapter.recipes}
