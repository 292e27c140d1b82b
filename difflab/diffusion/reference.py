"""Reference classifiers: a small CNN per dataset, trained by difflab on the real images.

Inception FID needs weights from the internet; difflab measures sample quality
offline with a classifier it trains itself on the images the diffusion model
learned from. Its penultimate layer gives the features of a Fréchet distance, its
softmax the confidence and the predicted class. A fifth of the labelled images is
held out of its training: they are the real-vs-real baseline. Trained classifiers
are cached per user, keyed by a hash of the images, the labels and the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from difflab.diffusion.data import ImageDataset
from difflab.diffusion.render import to_unit
from difflab.errors import InputError
from difflab.files import atomic_dir, waiting_lock

CACHE_ENV = "DIFFLAB_CACHE"
VERSION = 2  # part of the cache key: bump when the network or its training changes
MAX_SIZE = 16  # larger images are resized to this: enough to tell digits or shapes apart, and cheap
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class ClassifierSettings:
    """How a reference classifier is trained (all of it goes into the cache key)."""

    features: int = 64
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0


class ReferenceClassifier(nn.Module):
    """Images in 0..1 -> class logits; `features` is the penultimate layer the Fréchet distance uses."""

    def __init__(self, channels: int, classes: int, features: int = 64, size: int = MAX_SIZE) -> None:
        super().__init__()
        self.size = size
        # Three convolutions: two (version 1) told the 32 px shapes apart only 66% of the time,
        # three reach 99% (rotated squares and small triangles need the larger receptive field).
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if size >= 16 else nn.Identity(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        """Images at the classifier's own size."""
        if x.shape[-1] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.resized(x) * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class RealSplit:
    """The labelled real images in 0..1: the classifier's training part and the held-out part."""

    train: torch.Tensor
    train_labels: torch.Tensor
    held_out: torch.Tensor
    held_out_labels: torch.Tensor


@dataclass
class Reference:
    """A trained reference classifier, the split it was trained on, and where it is cached."""

    model: ReferenceClassifier
    split: RealSplit
    class_names: list[str]
    held_out_accuracy: float
    path: Path
    built_in_s: float | None  # seconds it took to train now; None when it came from the cache


def cache_dir() -> Path:
    """$DIFFLAB_CACHE, else $XDG_CACHE_HOME/difflab, else ~/.cache/difflab."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "difflab"


def missing_reason(data: ImageDataset) -> str | None:
    """Why this dataset can have no reference classifier, or None when it can."""
    classes = torch.unique(data.labels[data.labels >= 0])
    if len(classes) < 2:
        return f"dataset '{data.name}' has fewer than 2 labelled classes (a folder needs class subfolders)"
    return None


def split_real(data: ImageDataset, seed: int = 0) -> RealSplit:
    """A seeded random fifth of the labelled images held out; the rest trains the classifier."""
    labelled = torch.nonzero(data.labels.cpu() >= 0).flatten()
    order = labelled[torch.randperm(len(labelled), generator=torch.Generator().manual_seed(seed))]
    cut = max(1, round(len(order) * HELD_OUT_SHARE))
    images = to_unit(data.images.cpu(), data.value_range)
    labels = data.labels.cpu()
    held, train = order[:cut].sort().values, order[cut:].sort().values
    return RealSplit(images[train], labels[train], images[held], labels[held])


def reference_classifier(data: ImageDataset, device: str = "cpu", log: Callable[[str], None] = lambda _: None,
                         settings: ClassifierSettings = ClassifierSettings()) -> Reference:
    """The dataset's reference classifier: from the cache, else trained now and cached."""
    reason = missing_reason(data)
    if reason:
        raise InputError(f"no reference classifier: {reason}")
    split = split_real(data, settings.seed)
    folder = cache_dir() / "classifiers" / f"{_safe(data.name)}-{_cache_key(split, data, settings)}"
    # Another process training this same classifier: wait for it and read its result.
    with waiting_lock(folder.with_name(f".{folder.name}.lock")):
        cached = _load(folder, device)
        if cached is not None:
            model, meta = cached
            return Reference(model, split, meta["class_names"], meta["held_out_accuracy"], folder, None)
        return _train_and_cache(split, data, settings, device, folder, log)


def _train_and_cache(split: RealSplit, data: ImageDataset, settings: ClassifierSettings, device: str,
                     folder: Path, log: Callable[[str], None]) -> Reference:
    log(f"training the reference classifier for '{data.name}' ({len(split.train)} images; cached in {folder})")
    started = time.perf_counter()
    model = _train(split, len(data.class_names), settings, device)
    accuracy = classify_accuracy(model, split.held_out, split.held_out_labels)
    seconds = time.perf_counter() - started
    _save(folder, model, {"class_names": data.class_names, "held_out_accuracy": accuracy,
                          "train_seconds": round(seconds, 2), "channels": split.train.shape[1],
                          "size": model.size, "settings": asdict(settings), "version": VERSION})
    log(f"reference classifier: {accuracy:.1%} right on {len(split.held_out)} held-out images, "
        f"trained in {seconds:.1f} s")
    return Reference(model, split, data.class_names, accuracy, folder, seconds)


@torch.no_grad()
def predict(model: ReferenceClassifier, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Softmax probabilities for images in 0..1 (on the classifier's device)."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(images[i:i + batch].to(device)).softmax(-1).cpu()
                      for i in range(0, len(images), batch)])


def classify_accuracy(model: ReferenceClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose predicted class is `labels`."""
    return float((predict(model, images).argmax(-1) == labels.cpu()).float().mean())


@torch.enable_grad()  # guided sampling asks for the classifier from inside its no-grad loop
def _train(split: RealSplit, classes: int, settings: ClassifierSettings, device: str) -> ReferenceClassifier:
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    size = min(split.train.shape[-1], MAX_SIZE)
    model = ReferenceClassifier(split.train.shape[1], classes, settings.features, size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    images = model.resized(split.train)  # once, not every step
    model.train()
    for _ in range(settings.steps):
        pick = torch.randint(len(images), (settings.batch_size,), generator=generator)
        x = _shifted(images[pick], generator).to(device)
        loss = F.cross_entropy(model(x), split.train_labels[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def _shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch moved by up to 1/14 of its size each way: samples are rarely centred like the data."""
    most = max(1, x.shape[-1] // 14)
    dx, dy = torch.randint(-most, most + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def _cache_key(split: RealSplit, data: ImageDataset, settings: ClassifierSettings) -> str:
    digest = hashlib.sha256(json.dumps({"version": VERSION, **asdict(settings),
                                        "classes": data.class_names}).encode())
    for tensor in (split.train, split.train_labels, split.held_out, split.held_out_labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def _save(folder: Path, model: ReferenceClassifier, meta: dict) -> None:
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def _load(folder: Path, device: str) -> tuple[ReferenceClassifier, dict] | None:
    """A cached classifier, or None when there is none or it is unreadable (then it is trained again)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        weights = load_file(folder / "model.safetensors")
        model = ReferenceClassifier(meta["channels"], len(meta["class_names"]), meta["settings"]["features"],
                                    meta["size"])
        model.load_state_dict(weights)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    return model.to(device).eval(), meta
