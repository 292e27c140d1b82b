"""Fine-tuning: start from trained weights, and LoRA adapters through peft.

`train.init_from` names where the weights come from: a run folder (its exported
model, else its latest checkpoint), a checkpoint folder, a diffusers pipeline or
model folder, or a hub id. The recipe's own [model] must build the same network;
when it does not, the error lists the tensors that differ.

LoRA (`train.lora_rank > 0`) injects low-rank adapters into the named layers with
peft's `inject_adapter_in_model` (what diffusers' own `add_adapter` calls; diffusers
0.42's UNet2DModel has no adapter mixin of its own), which freezes every other
weight. The run saves only the adapter (peft's `get_peft_model_state_dict`, as
safetensors) and, for plain diffusers, a model with the adapter merged in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from difflab.errors import InputError
from difflab.recipe import Recipe, TrainConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# owner/name: what a hub id looks like (a local path that does not exist may look the same)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# ---------------------------------------------------------------- init_from


def load_initial_weights(model: nn.Module, recipe: Recipe, base_dir: Path | None = None) -> str:
    """Load `train.init_from` into `model` (built from `recipe`); returns a line saying what was loaded."""
    source = recipe.train.init_from
    weights = source_weights(source, recipe, base_dir)
    own = model.state_dict()
    mismatched = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in weights and weights[k].shape != v.shape]
    # A class embedding may be new (an unconditional source made conditional) or dropped: it starts fresh.
    missing = [k for k in own if k not in weights and not k.startswith("class_embedding.")]
    unexpected = [k for k in weights if k not in own and not k.startswith("class_embedding.")]
    if mismatched or missing or unexpected:
        raise InputError(_mismatch_message(source, mismatched, missing, unexpected))
    fresh = [k for k in own if k not in weights]
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    note = f"; {', '.join(fresh)} start fresh" if fresh else ""
    return f"initialised from {source}: {len(own) - len(fresh)} tensors{note}"


def _mismatch_message(source: str, mismatched, missing, unexpected) -> str:
    parts = []
    if mismatched:
        shown = ", ".join(f"{k} (source {a}, recipe {b})" for k, a, b in mismatched[:3])
        parts.append(f"{len(mismatched)} tensors differ in shape: {shown}{_more(mismatched)}")
    if missing:
        parts.append(f"{len(missing)} of the recipe's tensors are not in the source: "
                     f"{', '.join(missing[:3])}{_more(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} of the source's tensors have no place in the recipe's model: "
                     f"{', '.join(unexpected[:3])}{_more(unexpected)}")
    return (f"train.init_from = '{source}': its weights do not fit the model this recipe builds; "
            + "; ".join(parts) + ". Make [model] (and dataset.channels, dataset.image_size) match the "
            "source's (its recipe.toml or config.json)")


def _more(items: list) -> str:
    return f" and {len(items) - 3} more" if len(items) > 3 else ""


def source_weights(source: str, recipe: Recipe, base_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict `source` holds: run, checkpoint, pipeline or model folder, or hub id."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        return _folder_weights(path, source, recipe)
    if path.exists() or not _HUB_ID.match(source):
        raise InputError(f"train.init_from = '{source}': no such folder ({path}); give a run folder, a "
                         f"checkpoint folder, a diffusers pipeline or model folder, or a hub id (owner/name)")
    return _pipeline_unet(source, source).state_dict()


def _folder_weights(path: Path, source: str, recipe: Recipe) -> dict[str, torch.Tensor]:
    from difflab.runtime.runs import RunDir
    from difflab.jobs.sampling import checkpoint_model, load_model_folder
    from difflab.runtime.runs import source_kind

    kind = source_kind(path)
    if kind == "pipeline":
        return _pipeline_unet(str(path), source).state_dict()
    if kind == "checkpoint":
        return checkpoint_model(path).state_dict()
    if (path / "config.json").is_file():  # a model folder written by save_pretrained (RUN/model)
        return load_model_folder(path, recipe.model.kind, f"train.init_from = '{source}'").state_dict()
    run, _ = RunDir.open(path)  # says clearly when it is not a run folder either
    if (run.model_dir / "config.json").is_file():
        return _folder_weights(run.model_dir, source, recipe)
    checkpoints = run.list_checkpoints()
    if not checkpoints:
        raise InputError(f"train.init_from = '{source}': the run has neither a final model ({run.model_dir}) "
                         f"nor a checkpoint to start from")
    return checkpoint_model(checkpoints[-1]).state_dict()


def _pipeline_unet(location: str, source: str) -> nn.Module:
    """The UNet of a pipeline folder or hub id (cache first, then the network), as `difflab sample` loads it."""
    from difflab.jobs.sampling import load_pipeline

    return load_pipeline(location, f"train.init_from = '{source}'")[0]


# ---------------------------------------------------------------- LoRA


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
    from peft import LoraConfig

    # B starts at zero (peft's default), so the adapted model starts exactly as the base.
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets))


def add_lora(model: nn.Module, cfg: TrainConfig, config=None) -> LoraReport:
    """Inject LoRA adapters (peft) into `model` in place; only they stay trainable."""
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        inject_adapter_in_model(config or lora_config(cfg), model)
    except ValueError as error:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise InputError(f"train.lora_targets = {list(cfg.lora_targets)}: {str(error).splitlines()[0]} "
                         f"(this model's linear and convolution layers end in: {', '.join(names)})") from None
    layers = sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraReport(layers, trainable, sum(p.numel() for p in model.parameters()))


def save_lora(model: nn.Module, cfg: TrainConfig, folder: Path) -> Path:
    """Write only the adapter weights (safetensors) and their peft config into `folder`, atomically."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from difflab.files import atomic_dir

    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    with atomic_dir(folder) as tmp:
        save_file(weights, tmp / ADAPTER_WEIGHTS)
        lora_config(cfg).save_pretrained(tmp)  # adapter_config.json, peft's own format
    return folder


def load_lora(model: nn.Module, folder: str | Path) -> LoraReport:
    """Put a saved adapter (save_lora's folder) onto a base model in place."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = LoraConfig.from_pretrained(folder)
        weights = load_file(folder / ADAPTER_WEIGHTS)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise InputError(f"{folder}: not a LoRA adapter folder ({str(error).splitlines()[0]})") from None
    report = add_lora(model, TrainConfig(lora_rank=config.r, lora_alpha=float(config.lora_alpha),
                                         lora_targets=sorted(config.target_modules)), config)
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise InputError(f"{folder}: the adapter does not fit this model ({result.unexpected_keys[:3]})")
    return report


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter's delta (peft's get_delta_weight) added in."""
    from peft.tuners.tuners_utils import BaseTunerLayer

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
