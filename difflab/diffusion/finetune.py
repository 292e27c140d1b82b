"""Fine-tuning: start a run from trained weights (`train.init_from`).

`train.init_from` names where the weights come from: a run folder (its exported
model, else its latest checkpoint), a checkpoint folder, a diffusers pipeline or
model folder, or a hub id. The recipe's own [model] must build the same network;
when it does not, the error lists the tensors that differ.
LoRA adapters are lora.py's.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from difflab.diffusion.loading import checkpoint_model, load_model_folder, load_pipeline
from difflab.errors import InputError
from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir, source_kind

# owner/name: what a hub id looks like (a local path that does not exist may look the same)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


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
    return load_pipeline(location, f"train.init_from = '{source}'")[0]
