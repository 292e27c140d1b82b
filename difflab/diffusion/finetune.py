"""Fine-tuning: start a run from trained weights (`train.init_from`).

`train.init_from` names where the weights come from: a run folder (its exported
model, else its latest checkpoint), a checkpoint folder, a diffusers pipeline or
model folder, or a hub id. build_model has already built the source's own network
(its saved config, sources.py); this fills in the source's weights. A class
embedding the source lacks (an unconditional model made class-conditional) starts
fresh. A VAE recipe's source is an AutoencoderKL (a VAE folder, a pipeline's or a
run's vae/, a hub id's vae/). LoRA adapters are lora.py's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DModel
from torch import nn

from difflab.diffusion.hub import cache_then_hub
from difflab.diffusion.loading import checkpoint_model, load_model_folder
from difflab.diffusion.sources import HUB_ID, local_path, open_source, vae_folder_in
from difflab.errors import InputError, reason
from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir, source_kind


def load_initial_weights(model: nn.Module, recipe: Recipe, base_dir: Path | None = None) -> str:
    """Load `train.init_from` into `model` (built from `recipe`); returns a line saying what was loaded."""
    source = recipe.train.init_from
    weights = source_weights(source, recipe, base_dir)
    own = model.state_dict()
    mismatched = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in weights and weights[k].shape != v.shape and not k.startswith("class_embedding.")]
    # A class embedding may be new (an unconditional source made conditional), resized or dropped: it starts fresh.
    missing = [k for k in own if k not in weights and not k.startswith("class_embedding.")]
    unexpected = [k for k in weights if k not in own and not k.startswith("class_embedding.")]
    if mismatched or missing or unexpected:
        raise InputError(_mismatch_message(source, mismatched, missing, unexpected))
    fresh = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
    model.load_state_dict({k: v for k, v in weights.items() if k in own and k not in fresh}, strict=False)
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
    return (f"train.init_from = '{source}': its weights do not fit the network its config describes; "
            + "; ".join(parts) + ". Its config.json and weights disagree: was the folder edited by hand?")


def _more(items: list) -> str:
    return f" and {len(items) - 3} more" if len(items) > 3 else ""


def source_weights(source: str, recipe: Recipe, base_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict `source` holds: run, checkpoint, pipeline or model folder, or hub id."""
    path = local_path(source, base_dir)
    if path is not None and path.is_dir():
        return _folder_weights(path, source, recipe)
    if path is not None or not HUB_ID.match(source):
        raise InputError(f"train.init_from = '{source}': no such folder; give a run folder, a checkpoint "
                         f"folder, a diffusers pipeline or model folder, or a hub id (owner/name)")
    return (_hub_vae(source) if _is_vae(recipe) else _hub_unet(source)).state_dict()


def _is_vae(recipe: Recipe) -> bool:
    return recipe.model.kind == "autoencoder-kl"


def _folder_weights(path: Path, source: str, recipe: Recipe) -> dict[str, torch.Tensor]:
    kind = source_kind(path)
    what = f"train.init_from = '{source}'"
    if _is_vae(recipe) and kind != "checkpoint" and (folder := vae_folder_in(path)) is not None:
        return _folder_vae(folder, what).state_dict()
    if kind == "pipeline":
        return load_model_folder(path / "unet", "unet2d", what).state_dict()
    if kind == "checkpoint":
        return checkpoint_model(path).state_dict()
    if (path / "config.json").is_file():  # a model folder written by save_pretrained (RUN/model)
        kind = open_source(str(path)).model_kind
        return load_model_folder(path, kind, what).state_dict()
    run, _ = RunDir.open(path)  # says clearly when it is not a run folder either
    if (run.model_dir / "config.json").is_file():
        return _folder_weights(run.model_dir, source, recipe)
    checkpoints = run.list_checkpoints()
    if not checkpoints:
        final = run.vae_dir if _is_vae(recipe) else run.model_dir
        raise InputError(f"{what}: the run has neither a final model ({final}) nor a checkpoint to start from")
    return checkpoint_model(checkpoints[-1]).state_dict()


def _folder_vae(folder: Path, what: str) -> AutoencoderKL:
    try:
        return AutoencoderKL.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{what}: cannot load the AutoencoderKL in {folder} ({reason(error)})") from None


def _hub_vae(hub_id: str) -> AutoencoderKL:
    """The VAE of a hub pipeline (its vae/ folder, e.g. Stable Diffusion's), or a bare AutoencoderKL repo."""
    def load(**options) -> AutoencoderKL:
        try:
            return AutoencoderKL.from_pretrained(hub_id, subfolder="vae", **options)
        except (OSError, ValueError):
            return AutoencoderKL.from_pretrained(hub_id, **options)
    return cache_then_hub(load, f"train.init_from = '{hub_id}'", missing="no AutoencoderKL")


def _hub_unet(hub_id: str) -> UNet2DModel:
    """The UNet of a hub pipeline (its unet/ folder, or a bare model repo): the cache first, then the network."""
    return cache_then_hub(lambda **options: _repo_unet(hub_id, **options), f"train.init_from = '{hub_id}'",
                          missing="no such model")


def _repo_unet(hub_id: str, **options) -> UNet2DModel:
    try:
        return UNet2DModel.from_pretrained(hub_id, subfolder="unet", **options)
    except (OSError, ValueError):
        return UNet2DModel.from_pretrained(hub_id, **options)  # a bare model repo
