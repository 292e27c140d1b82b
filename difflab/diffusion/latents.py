"""Stable Diffusion's first half: a VAE (diffusers' AutoencoderKL) that maps images to latents and back.

A latent recipe (`[latent] vae = ...`) trains its UNet on the VAE's latents instead of pixels:
the dataset is encoded once (`encode_dataset`, the posterior means, scaled to unit variance by
the VAE's scaling factor, as Stable Diffusion's 0.18215 does) and kept resident like pixels are,
so an epoch costs no VAE passes; samples are decoded back to pixels (`LatentCodec.decode`).

`latent.vae` names a VAE folder, a run that trained one (RUN/vae), a pipeline (its vae/, or an
LDMPipeline's vqvae/), a hub id, or a built-in VAE recipe (`vae-shapes`, `vae-shapes:smoke`),
which difflab.jobs.vae_source trains once and caches. Shapes are read from configs alone
(`model_input_shape`), so the model screen can size a latent UNet without loading any weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from difflab.diffusion.hub import cache_then_hub
from difflab.errors import InputError, reason
from difflab.recipe import VALUE_RANGES, Recipe, load_recipe
from difflab.runtime.catalog import builtin_recipes

HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")
VAE_FOLDERS = ("vae", "vqvae")  # a StableDiffusionPipeline's, an LDMPipeline's
ALLOWED = ("a run folder that trained a VAE, an AutoencoderKL folder, a pipeline folder with vae/, a hub id "
           "(owner/name), or a built-in VAE recipe ({names})")


def build_vae(recipe: Recipe) -> AutoencoderKL:
    """A fresh AutoencoderKL as the recipe's [model] describes it (model.kind = 'autoencoder-kl')."""
    return AutoencoderKL.from_config(vae_config(recipe))


def vae_config(recipe: Recipe) -> dict[str, Any]:
    """AutoencoderKL's config from [model]: one encoder and decoder block per level, each level but
    the last halving the image, as Stable Diffusion's VAE is built (its levels: 128, 256, 512, 512)."""
    cfg, levels = recipe.model, len(recipe.model.block_out_channels)
    return {"_class_name": "AutoencoderKL", "in_channels": recipe.dataset.channels,
            "out_channels": recipe.dataset.channels, "block_out_channels": list(cfg.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "layers_per_block": cfg.layers_per_block, "latent_channels": cfg.latent_channels,
            "norm_num_groups": cfg.norm_num_groups, "sample_size": recipe.dataset.image_size}


def downscale(config: dict[str, Any]) -> int:
    """How many pixels one latent cell covers along a side: each level but the last halves."""
    return 2 ** (len(config.get("block_out_channels", [0])) - 1)


# ---------------------------------------------------------------- what latent.vae names


@dataclass(frozen=True)
class VaeSpec:
    """What `latent.vae` names: a local folder, a built-in recipe (with a profile) or a hub id."""

    text: str
    kind: str  # "folder", "builtin" or "hub"
    folder: Path | None = None  # the AutoencoderKL's own folder (kind "folder")
    recipe: str = ""  # kind "builtin": the recipe's name
    profile: str = ""  # kind "builtin": its profile ("" = the recipe as written)


def parse_vae_spec(text: str, base_dir: Path | None = None) -> VaeSpec:
    """Where `latent.vae` points: an existing folder first, then a built-in name, then a hub id."""
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [*([base_dir / path] if base_dir else []), Path.cwd() / path]
    found = next((p for p in candidates if p.exists()), None)
    if found is not None:
        return VaeSpec(text, "folder", vae_folder(found, text))
    name, _, profile = text.partition(":")
    if name in builtin_names():
        return VaeSpec(text, "builtin", recipe=name, profile=profile)
    if text.count("/") == 1 and set(text) <= HUB_ID_CHARS and not text.startswith((".", "/")):
        return VaeSpec(text, "hub")
    where = Path(base_dir or Path.cwd()) / text
    raise InputError(f"latent.vae = '{text}': no such folder ({where}), no built-in recipe of that name; give "
                     + ALLOWED.format(names=", ".join(builtin_names()) or "none"))


def builtin_names() -> list[str]:
    """The built-in recipes that train a VAE."""
    names = []
    for builtin in builtin_recipes():
        if 'kind = "autoencoder-kl"' in builtin.path.read_text(encoding="utf-8"):
            names.append(builtin.name)
    return names


def vae_folder(path: Path, text: str) -> Path:
    """The AutoencoderKL folder inside what `path` is: itself, a pipeline's vae/ or vqvae/, a run's vae/."""
    if path.is_file():
        raise InputError(f"latent.vae = '{text}': {path} is a file; give a VAE, pipeline or run folder")
    for folder in (path, *(path / name for name in VAE_FOLDERS)):
        config = folder / "config.json"
        if config.is_file():
            kind = _read_config(config, text).get("_class_name")
            if kind == "AutoencoderKL":
                return folder
            if folder == path and kind:
                raise InputError(f"latent.vae = '{text}': {config} describes a {kind}, not an AutoencoderKL")
    if (path / "recipe.toml").is_file():
        raise InputError(f"latent.vae = '{text}': the run {path} has no vae/ folder: it did not train a VAE "
                         f"(model.kind = 'autoencoder-kl') or has not finished")
    raise InputError(f"latent.vae = '{text}': {path} holds no AutoencoderKL (no config.json naming one, "
                     f"and no vae/ folder)")


def _read_config(path: Path, text: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"latent.vae = '{text}': {path} cannot be read as JSON ({reason(error)})") from None
    if not isinstance(config, dict):
        raise InputError(f"latent.vae = '{text}': {path} is not a JSON object")
    return config


def builtin_vae_recipe(spec: VaeSpec) -> Recipe:
    """The built-in VAE recipe a spec names, its profile laid over it."""
    path = next(b.path for b in builtin_recipes() if b.name == spec.recipe)
    try:
        return load_recipe(path, profile=spec.profile or None)
    except InputError as error:
        raise InputError(f"latent.vae = '{spec.text}': {error}") from None


def spec_config(spec: VaeSpec, online: bool = True) -> dict[str, Any] | None:
    """The AutoencoderKL config a spec stands for, without weights (None: a hub id not at hand offline)."""
    if spec.kind == "folder":
        return _read_config(spec.folder / "config.json", spec.text)
    if spec.kind == "builtin":
        return vae_config(builtin_vae_recipe(spec))
    return _hub_config(spec.text, online)


def _hub_config(hub_id: str, online: bool) -> dict[str, Any] | None:
    """A hub VAE's config (see _from_hub); offline and not cached: None."""
    if not online:
        try:
            return _first_subfolder(AutoencoderKL.load_config, hub_id, local_files_only=True)
        except OSError:
            return None
    return _from_hub(AutoencoderKL.load_config, hub_id)


def _from_hub(read, hub_id: str):
    """read(hub_id, subfolder=...) of the first of a pipeline's vae/, an LDMPipeline's vqvae/ or a
    bare model's root that has one: the local cache first, then the hub when it can be asked."""
    return cache_then_hub(lambda local_files_only: _first_subfolder(read, hub_id, local_files_only),
                          f"latent.vae = '{hub_id}'", "no AutoencoderKL in vae/, vqvae/ or its root")


def _first_subfolder(read, hub_id: str, local_files_only: bool):
    for subfolder in (*VAE_FOLDERS, None):
        try:
            return read(hub_id, subfolder=subfolder, local_files_only=local_files_only)
        except (OSError, ValueError):
            continue
    raise OSError(f"{hub_id}: neither vae/, vqvae/ nor its root holds an AutoencoderKL")


def model_input_shape(recipe: Recipe, base_dir: Path | None = None, estimate: bool = False) -> tuple[int, int, int]:
    """What the recipe's network sees: (channels, size, size) of its images, or of their latents.

    `estimate` (sizes only): a hub VAE not at hand is not fetched, and says so (its shape is
    unknown until a run fetches it)."""
    d = recipe.dataset
    if not recipe.latent.vae:
        return d.channels, d.image_size, d.image_size
    spec = parse_vae_spec(recipe.latent.vae, base_dir)
    config = spec_config(spec, online=not estimate)
    if config is None:
        raise InputError(f"latent.vae = '{spec.text}': not in the Hugging Face cache, and sizes are not worth "
                         f"a download: its latent's shape is known once a run has fetched it")
    return latent_shape(config, recipe, spec.text)


def latent_shape(config: dict[str, Any], recipe: Recipe, text: str) -> tuple[int, int, int]:
    """The latent of one of the recipe's images through a VAE of this config; refuses sizes and
    channels that do not fit it."""
    d, factor = recipe.dataset, downscale(config)
    if config.get("in_channels", 3) != d.channels:
        raise InputError(f"dataset.channels = {d.channels}: the VAE of latent.vae = '{text}' encodes "
                         f"{config.get('in_channels')}-channel images")
    if d.image_size % factor:
        fit = max(factor, round(d.image_size / factor) * factor)
        raise InputError(f"dataset.image_size = {d.image_size}: the VAE of latent.vae = '{text}' halves the "
                         f"image {factor.bit_length() - 1} times, so the size must be divisible by {factor} "
                         f"(e.g. {fit})")
    size = d.image_size // factor
    levels = len(recipe.model.block_out_channels)
    if size % 2 ** (levels - 1):
        raise InputError(f"model.block_out_channels = {list(recipe.model.block_out_channels)}: the UNet halves "
                         f"its input {levels - 1} times, but the latent is {size} x {size} "
                         f"(dataset.image_size {d.image_size} / {factor}); use fewer levels or larger images")
    return int(config.get("latent_channels", 4)), size, size


# ---------------------------------------------------------------- encoding and decoding


@dataclass
class LatentCodec:
    """A VAE and the factor that scales its latents to unit variance: pixels <-> scaled latents."""

    vae: AutoencoderKL
    scaling_factor: float
    value_range: tuple[float, float]
    source: str = ""  # where the VAE came from, in words

    @property
    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downscale(self) -> int:
        return downscale(self.vae.config)

    def to(self, device: str) -> LatentCodec:
        return replace(self, vae=self.vae.to(device))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Scaled latents of images in the value range: the posterior's mean. Training samples fresh
        noise on these latents at every step anyway; the posterior's own spread (under SD's tiny
        KL weight, far smaller than the latents' spread) adds nothing a cached mean lacks."""
        self.vae.eval()
        device = self.vae.device
        parts = [self.vae.encode(chunk.to(device)).latent_dist.mean for chunk in images.split(batch)]
        return torch.cat(parts) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Images in the value range from scaled latents (on the latents' device)."""
        self.vae.eval()
        device, low, high = self.vae.device, *self.value_range
        parts = [self.vae.decode(chunk.to(device, self.vae.dtype) / self.scaling_factor).sample
                 for chunk in latents.split(batch)]
        return torch.cat(parts).float().clamp(low, high).to(latents.device)


def open_codec(recipe: Recipe, folder: Path | str, device: str = "cpu", source: str = "") -> LatentCodec:
    """The LatentCodec of an AutoencoderKL folder (or hub id), with the recipe's scaling factor
    (latent.scaling_factor, else the VAE's own)."""
    vae = load_vae(str(folder), recipe.latent.vae or str(folder))
    factor = recipe.latent.scaling_factor or float(vae.config.scaling_factor)
    return LatentCodec(vae.to(device).eval(), factor, VALUE_RANGES[recipe.dataset.value_range],
                       source or str(folder))


def load_vae(where: str, text: str) -> AutoencoderKL:
    """An AutoencoderKL from a folder, or a hub id (its vae/ or vqvae/ subfolder, else its root)."""
    path = Path(where)
    if path.is_dir():
        try:
            return AutoencoderKL.from_pretrained(path)
        except (OSError, ValueError, RuntimeError) as error:
            raise InputError(f"latent.vae = '{text}': {path} does not load as an AutoencoderKL "
                             f"({reason(error)})") from None
    return _from_hub(AutoencoderKL.from_pretrained, where)

@dataclass
class EncodedDataset:
    """A dataset's latents (an ImageDataset whose images are latents) and what encoding cost."""

    data: Any  # ImageDataset, its images (N, C, h, w) scaled latents
    seconds: float
    mean: list[float]  # per latent channel, after scaling
    std: list[float]


def encode_dataset(codec: LatentCodec, data, batch: int = 64) -> EncodedDataset:
    """Every image encoded once, kept as the resident tensor training slices (no VAE pass per epoch)."""
    started = time.perf_counter()
    latents = codec.encode(data.images, batch).to(data.images.device)
    seconds = time.perf_counter() - started
    flat = latents.transpose(0, 1).flatten(1).float()
    return EncodedDataset(replace(data, images=latents), seconds, flat.mean(1).tolist(), flat.std(1).tolist())
