"""What a trained VAE does to images: how many times fewer numbers its latent holds, how well it
reconstructs images it never trained on (MSE and PSNR), and the statistics of its latents, whose
overall spread gives the scaling factor that brings them to unit variance for a diffusion model
(Stable Diffusion's 0.18215 is that number for its own VAE).

Held-out images are a seeded subset set aside before training (`split_held_out`), so the figures
measure what the VAE learnt about images in general, not what it memorised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from diffusers import AutoencoderKL
from PIL import Image

from difflab.diffusion.data import ImageDataset
from difflab.diffusion.latents import LatentCodec, encode_dataset
from difflab.diffusion.render import labelled_rows, latent_figure, to_unit

HELD_OUT_SEED = 7_919  # mixed into the recipe's seed: the split is its own draw, not the data order's
FIGURE_COLUMNS = 8  # images per row of an originals | reconstructions figure
LATENT_FIGURE_IMAGES = 4
MAX_PSNR_DB = 100.0


def split_held_out(data: ImageDataset, count: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(the images to train on, `count` seeded images kept out of training), each in the data's order."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed ^ HELD_OUT_SEED))  # XOR: stays a 63-bit seed
    held, kept = order[:count].sort().values, order[count:].sort().values
    return _subset(data, kept), _subset(data, held)


def _subset(data: ImageDataset, indices: torch.Tensor) -> ImageDataset:
    captions = None if data.captions is None else [data.captions[i] for i in indices.tolist()]
    where = indices.to(data.images.device)
    return replace(data, images=data.images[where], labels=data.labels[where.to(data.labels.device)],
                   captions=captions)


@dataclass
class VaeReport:
    """A trained VAE's figures, as summary.json's "vae" holds them."""

    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    train_images: int
    held_out_images: int
    mse: float  # per pixel value on the 0..1 scale, over the held-out images
    psnr_db: float  # 10 log10(1 / mse): the held-out set's PSNR
    train_psnr_db: float  # the same on as many training images: the gap is what it memorised
    latent_mean: list[float]  # per latent channel, unscaled, over the training images
    latent_std: list[float]
    latent_std_all: float  # of every latent value at once
    scaling_factor: float  # 1 / latent_std_all

    @property
    def compression_factor(self) -> float:
        """Numbers in an image over numbers in its latent (32x32x3 -> 8x8x4: 12)."""
        return math.prod(self.image_shape) / math.prod(self.latent_shape)

    def as_summary(self) -> dict:
        return {**asdict(self), "compression_factor": round(self.compression_factor, 4)}


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on the 0..1 scale (at most 100 dB:
    a perfect copy's infinity has no place in JSON)."""
    return min(10 * math.log10(1 / mse), MAX_PSNR_DB) if mse > 0 else MAX_PSNR_DB


def reconstruct(codec: LatentCodec, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images through the VAE and back, deterministically: the posterior's mean, decoded."""
    return codec.decode(codec.encode(images, batch), batch)


def reconstruction_mse(codec: LatentCodec, images: torch.Tensor, batch: int = 64) -> float:
    """Mean squared error per pixel value of the reconstructions, both sides on the 0..1 scale."""
    rebuilt = reconstruct(codec, images, batch)
    originals = images.to(rebuilt.device)
    return float((to_unit(rebuilt, codec.value_range) - to_unit(originals, codec.value_range)).square().mean())


def measure_vae(vae: AutoencoderKL, train: ImageDataset, held_out: ImageDataset, batch: int = 64) -> VaeReport:
    """Reconstruction error on the held-out images, and the scaling factor from the training latents.

    The factor is 1 / std of every latent value of the training set at once, as Rombach et al.
    measured 0.18215. They sampled the posterior; difflab's latent runs encode its mean
    (latents.LatentCodec), so the mean is what must come out at unit variance here. Under a
    small KL weight the two differ by far less than a percent."""
    codec = LatentCodec(vae, 1.0, train.value_range)  # unscaled: the factor is what is measured
    encoded = encode_dataset(codec, train, batch)  # the per-channel statistics a latent run logs, too
    latents = encoded.data.images.float()
    spread = float(latents.std())
    mse = reconstruction_mse(codec, held_out.images, batch)
    train_mse = reconstruction_mse(codec, train.images[:len(held_out)], batch)
    return VaeReport(
        image_shape=tuple(train.images.shape[1:]), latent_shape=tuple(latents.shape[1:]),
        train_images=len(train), held_out_images=len(held_out), mse=mse, psnr_db=psnr(mse),
        train_psnr_db=psnr(train_mse), latent_mean=encoded.mean, latent_std=encoded.std,
        latent_std_all=spread, scaling_factor=1 / spread)


def reconstruction_figure(codec: LatentCodec, originals: torch.Tensor, batch: int = 64) -> Image.Image:
    """Rows of originals, each with their reconstructions in the row below."""
    rebuilt = reconstruct(codec, originals, batch)
    rows, labels = [], []
    for start in range(0, len(originals), FIGURE_COLUMNS):
        rows += [originals[start:start + FIGURE_COLUMNS], rebuilt[start:start + FIGURE_COLUMNS]]
        labels += ["original", "decoded"]
    return labelled_rows(rows, labels, codec.value_range)


def latent_channels_figure(codec: LatentCodec, images: torch.Tensor) -> Image.Image:
    """A few images, each latent channel (scaled by the codec's factor) as a grey picture, and the
    image decoded back (render.latent_figure)."""
    images = images[:LATENT_FIGURE_IMAGES]
    latents = codec.encode(images)
    return latent_figure(images, latents, codec.value_range, codec.decode(latents))
