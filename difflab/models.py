"""Networks that undo corruption.

BasicUNet is the course's from-scratch model, kept short enough to read whole. It
is a diffusers ModelMixin so it saves and loads with save_pretrained /
from_pretrained (config.json + safetensors) like every other diffusers model.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from difflab.recipe import Recipe


class BasicUNet(ModelMixin, ConfigMixin):
    """A minimal UNet: one convolution per level down and up, pooling, skip connections."""

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: tuple[int, ...] = (32, 64, 64), kernel_size: int = 5):
        super().__init__()
        pad = kernel_size // 2
        down = [in_channels, *channels]
        # up mirrors down: (32, 64, 64) gives 64→64, 64→32, 32→out, as in the course.
        up = [*reversed(channels[:-1]), out_channels]
        self.down_layers = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size, padding=pad) for a, b in zip(down[:-1], down[1:]))
        self.up_layers = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size, padding=pad) for a, b in zip([channels[-1], *up[:-1]], up))
        self.act = nn.SiLU()
        self.downscale = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        last = len(self.down_layers) - 1
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))
            if i < last:  # every level but the bottom keeps a skip and halves the size
                skips.append(x)
                x = self.downscale(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x) + skips.pop()
            x = self.act(layer(x))  # the course applies SiLU after the last layer too
        return x


def build_model(recipe: Recipe) -> nn.Module:
    """The model a recipe describes, freshly initialised (seed the RNG first)."""
    cfg = recipe.model
    channels = recipe.dataset.channels
    return BasicUNet(in_channels=channels, out_channels=channels,
                     channels=tuple(cfg.channels), kernel_size=cfg.kernel_size)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that train)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
