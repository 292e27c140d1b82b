"""Networks that undo corruption: the course's BasicUNet and diffusers' UNet2DModel.

BasicUNet is the course's from-scratch model, kept short enough to read whole. It
is a diffusers ModelMixin so it saves and loads with save_pretrained /
from_pretrained (config.json + safetensors) like every other diffusers model.
UNet2DModel is diffusers' own, built from the recipe's knobs (or from a pretrained
source's saved config: sources.py); a class-conditional
one uses diffusers' class embedding (`num_class_embeds`: a learned vector per class
added to the timestep embedding) with one extra "no class" index for label dropout
and classifier-free guidance. `denoise` hides the differences that matter to a
loop: UNet2DModel also takes the timestep, and maybe the class.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from difflab.diffusion.latents import model_input_shape
from difflab.diffusion.sources import network_config
from difflab.errors import InputError
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


def build_model(recipe: Recipe, base_dir: Path | None = None, estimate: bool = False) -> nn.Module:
    """The model a recipe describes, freshly initialised (seed the RNG first).

    Starting from `train.init_from`, the network is the source's own (its saved config, the
    recipe's changes on top, sources.py); load_initial_weights then fills in its weights.
    `estimate`: for sizes only, where a source not at hand may be stood in for (network_config).
    """
    config = network_config(recipe, base_dir, estimate)
    classes = {"BasicUNet": BasicUNet, "AutoencoderKL": AutoencoderKL}
    return classes.get(config.get("_class_name"), UNet2DModel).from_config(config)


def check_input_fits(model: nn.Module, shape: tuple[int, ...], recipe: Recipe) -> None:
    """Refuse a network whose input channels contradict what it will be fed (a latent, or images)."""
    wanted = model.config.get("in_channels") if hasattr(model, "config") else None
    if wanted is not None and wanted != shape[0]:
        what = f"the {shape[0]}-channel latents of latent.vae = '{recipe.latent.vae}'" if recipe.latent.vae \
            else f"{shape[0]}-channel images (dataset.channels)"
        where = f"train.init_from = '{recipe.train.init_from}'" if recipe.train.init_from else "model"
        raise InputError(f"{where}: its network takes {wanted}-channel input, but it would be fed {what}")


def null_class(model: nn.Module) -> int | None:
    """The "no class" label of a class-conditional UNet2DModel (its last embedding), else None."""
    inner = getattr(model, "module", model)
    embeds = inner.config.get("num_class_embeds") if isinstance(inner, UNet2DModel) else None
    return embeds - 1 if embeds else None


def denoise(model: nn.Module, x: torch.Tensor, timesteps: torch.Tensor | None = None,
            class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The model's prediction for x; BasicUNet ignores the timestep (as in the course).

    A class-conditional model given no labels predicts unconditionally (the "no class" label).
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the real model
    inner = getattr(inner, "_orig_mod", inner)  # and torch.compile wraps it too
    if isinstance(inner, UNet2DModel):
        if timesteps is None:
            timesteps = torch.zeros(len(x), dtype=torch.long, device=x.device)  # the course's "timestep 0"
        null = null_class(inner)
        if null is None:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.full((len(x),), null, dtype=torch.long, device=x.device)
        return model(x, timesteps, class_labels=class_labels).sample
    return model(x)


@dataclass
class ModelReport:
    """What a dry run of a model shows: size, shapes per block, compute per image."""

    kind: str
    parameters: int
    input_shape: tuple[int, ...]
    blocks: list[tuple[str, tuple[int, ...]]]
    flops_per_image: int


def dry_run(recipe: Recipe, device: str = "cpu", base_dir: Path | None = None) -> ModelReport:
    """Build the recipe's model and push one image through it, counting FLOPs with torch's counter.
    On the "meta" device nothing is allocated: shapes and parameter counts of any size, at no cost
    (and a pretrained source not at hand is estimated by the recipe's own [model])."""
    torch.manual_seed(recipe.seed)
    with torch.device("meta") if device == "meta" else contextlib.nullcontext():
        model = build_model(recipe, base_dir, estimate=device == "meta")
    model = model.to(device).eval()
    x = torch.zeros(1, *model_input_shape(recipe, base_dir, estimate=device == "meta"), device=device)
    check_input_fits(model, tuple(x.shape[1:]), recipe)  # a clear refusal, not a convolution's shape error
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(_shape_recorder(name, shapes)) for name, module in _blocks(model)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if isinstance(model, AutoencoderKL):
            model(x)
        else:
            denoise(model, x, torch.zeros(1, dtype=torch.long, device=device))
    for hook in hooks:
        hook.remove()
    return ModelReport(recipe.model.kind, count_parameters(model), tuple(x.shape[1:]), shapes,
                       counter.get_total_flops())


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The parts whose output shapes tell the UNet's story: each level down, the middle, each level up."""
    if isinstance(model, BasicUNet):
        return ([(f"down_layers.{i}", m) for i, m in enumerate(model.down_layers)]
                + [(f"up_layers.{i}", m) for i, m in enumerate(model.up_layers)])
    if isinstance(model, AutoencoderKL):  # image -> latent (the quant_conv's mean and log-variance) -> image
        encoder, decoder = model.encoder, model.decoder
        return ([(f"encoder.down_blocks.{i}", m) for i, m in enumerate(encoder.down_blocks)]
                + ([("quant_conv (mean, logvar)", model.quant_conv)] if model.quant_conv is not None else [])
                + [(f"decoder.up_blocks.{i}", m) for i, m in enumerate(decoder.up_blocks)]
                + [("decoder.conv_out", decoder.conv_out)])
    return ([("conv_in", model.conv_in)]
            + [(f"down_blocks.{i} {type(m).__name__}", m) for i, m in enumerate(model.down_blocks)]
            + [("mid_block", model.mid_block)]
            + [(f"up_blocks.{i} {type(m).__name__}", m) for i, m in enumerate(model.up_blocks)]
            + [("conv_out", model.conv_out)])


def _shape_recorder(name: str, shapes: list):
    def record(module, inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        shapes.append((name, tuple(first.shape[1:])))
    return record


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that train)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def compiled_for_sampling(model: nn.Module, device: str) -> nn.Module:
    """The model under torch.compile for a sampler's many same-shaped calls; on CUDA also captured
    in CUDA graphs (mode 'reduce-overhead'), which replays each step without launching kernels."""
    mode = "reduce-overhead" if device.startswith("cuda") else None
    return torch.compile(model, mode=mode, dynamic=False)
