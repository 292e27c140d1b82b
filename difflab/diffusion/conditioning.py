"""Class conditioning: label dropout while training, classifier-free guidance while sampling.

A class-conditional UNet2DModel has one embedding per class plus a "no class" one
(index num_classes). Training replaces a share of the labels by "no class", so the
same network learns both p(x | class) and p(x); sampling then mixes the two
predictions, uncond + scale * (cond - uncond) (Ho & Salimans' classifier-free
guidance, the `guidance_scale` of every diffusers pipeline). Both predictions come
from one UNet call on a doubled batch, as diffusers' pipelines do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from difflab.diffusion.models import denoise, null_class

ModelFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def drop_labels(labels: torch.Tensor, dropout: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Labels with a `dropout` share (and every unlabelled -1) replaced by the `null` class."""
    dropped = torch.rand(len(labels), generator=generator, device=labels.device) < dropout
    return torch.where(dropped | (labels < 0), torch.full_like(labels, null), labels)


def sampling_labels(count: int, class_labels: list[int], num_classes: int, device) -> torch.Tensor:
    """The class of each of `count` images: the recipe's list repeated, or every class in turn."""
    cycle = class_labels or list(range(num_classes))
    return torch.tensor([cycle[i % len(cycle)] for i in range(count)], dtype=torch.long, device=device)


def guided_model_fn(model: torch.nn.Module, labels: torch.Tensor | None, scale: float) -> ModelFn:
    """model_fn(x, t) predicting for `labels` with classifier-free guidance `scale`.

    Scale 1 is the conditional prediction alone and 0 the unconditional one (one UNet call
    each); any other scale needs both, taken from one call on [x, x] with [labels, no class].
    """
    null = null_class(model)
    if null is None or labels is None:
        return lambda x, t=None: denoise(model, x, _batch(t, x))
    if scale == 1:
        return lambda x, t=None: denoise(model, x, _batch(t, x), labels)
    if scale == 0:
        return lambda x, t=None: denoise(model, x, _batch(t, x), torch.full_like(labels, null))

    def guided(x: torch.Tensor, t=None) -> torch.Tensor:
        steps = _batch(t, x)
        both = denoise(model, torch.cat([x, x]), None if steps is None else torch.cat([steps, steps]),
                       torch.cat([labels, torch.full_like(labels, null)]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided


def _batch(t, x: torch.Tensor) -> torch.Tensor | None:
    """A timestep (scalar or per image) as one per image of x; None stays None (the toy schedule)."""
    if t is None:
        return None
    t = torch.as_tensor(t, device=x.device)
    return t.expand(len(x)) if t.dim() == 0 else t


def run_class_names(run_dir: str | Path, num_classes: int) -> list[str]:
    """The class names a conditional run was trained with (summary.json), else "0", "1", ..."""
    try:
        names = json.loads((Path(run_dir) / "summary.json").read_text()).get("class_names") or []
    except (OSError, ValueError):
        names = []
    return [str(n) for n in names[:num_classes]] + [str(i) for i in range(len(names), num_classes)]
