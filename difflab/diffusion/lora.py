"""LoRA through peft: low-rank adapters on the named layers, saved alone or merged in.

`train.lora_rank > 0` injects adapters with peft's `inject_adapter_in_model` (what
diffusers' own `add_adapter` calls; diffusers 0.42's UNet2DModel has no adapter mixin
of its own), which freezes every other weight. A run saves only the adapter (peft's
`get_peft_model_state_dict`, as safetensors) and, for plain diffusers, a model with
the adapter merged in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from difflab.errors import InputError, reason
from difflab.files import atomic_dir
from difflab.recipe import TrainConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraReport:
    """What LoRA did to a model: adapted layers, trainable and total parameters."""

    layers: int
    trainable: int
    total: int

    def line(self, rank: int) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return (f"LoRA rank {rank} on {self.layers} layers: {self.trainable:,} trainable of "
                f"{self.total:,} parameters ({share:.1f}%)")


def lora_config(cfg: TrainConfig):
    # B starts at zero (peft's default), so the adapted model starts exactly as the base.
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets))


def add_lora(model: nn.Module, cfg: TrainConfig, config=None) -> LoraReport:
    """Inject LoRA adapters (peft) into `model` in place; only they stay trainable."""
    try:
        inject_adapter_in_model(config or lora_config(cfg), model)
    except ValueError as error:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise InputError(f"train.lora_targets = {list(cfg.lora_targets)}: {reason(error)} "
                         f"(this model's linear and convolution layers end in: {', '.join(names)})") from None
    layers = sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraReport(layers, trainable, sum(p.numel() for p in model.parameters()))


def save_lora(model: nn.Module, cfg: TrainConfig, folder: Path) -> Path:
    """Write only the adapter weights (safetensors) and their peft config into `folder`, atomically."""
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    with atomic_dir(folder) as tmp:
        save_file(weights, tmp / ADAPTER_WEIGHTS)
        lora_config(cfg).save_pretrained(tmp)  # adapter_config.json, peft's own format
    return folder


def load_lora(model: nn.Module, folder: str | Path) -> LoraReport:
    """Put a saved adapter (save_lora's folder) onto a base model in place."""
    folder = Path(folder)
    try:
        config = LoraConfig.from_pretrained(folder)
        weights = load_file(folder / ADAPTER_WEIGHTS)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise InputError(f"{folder}: not a LoRA adapter folder ({reason(error)})") from None
    report = add_lora(model, TrainConfig(lora_rank=config.r, lora_alpha=float(config.lora_alpha),
                                         lora_targets=sorted(config.target_modules)), config)
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise InputError(f"{folder}: the adapter does not fit this model ({result.unexpected_keys[:3]})")
    return report


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter's delta (peft's get_delta_weight) added in."""
    merged = {}
    lora_layers = {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    for name, module in lora_layers.items():
        base = module.get_base_layer()
        merged[f"{name}.weight"] = base.weight.detach() + sum(
            module.get_delta_weight(adapter) for adapter in module.active_adapters).detach()
        if base.bias is not None:
            merged[f"{name}.bias"] = base.bias.detach()
    for key, value in model.state_dict().items():
        owner = key.split(".base_layer.")[0] if ".base_layer." in key else None
        if owner is None and not any(key.startswith(f"{n}.lora_") for n in lora_layers):
            merged[key] = value
    return merged
