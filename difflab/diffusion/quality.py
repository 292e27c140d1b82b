"""Sample quality measured offline, against a dataset's reference classifier (reference.py).

- Fréchet distance between the classifier's penultimate features of real and generated
  images (torchmetrics' FrechetInceptionDistance with that network as the feature
  extractor), normalised against two baselines measured in the same call:
      normalised = (FD(samples) - FD(held-out real)) / (FD(noise) - FD(held-out real))
  0 means as close to the training images as unseen real images are, 1 as far as noise.
- mean confidence: the classifier's mean top softmax probability on the samples;
- class entropy: the entropy (bits) of the histogram of predicted classes: log2(classes)
  when every class is produced equally, 0 when all samples look like one class;
- class accuracy (class-conditional models): the share classified as the class asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from difflab.diffusion.reference import (
    Reference,
    ReferenceClassifier,
    classify_accuracy,
    predict,
)

# Below this many samples a Fréchet distance over the classifier's 64 features moves a lot
# from one seed to the next (measured: see README); compare only numbers of the same count.
STABLE_SAMPLES = 128


class _Features(nn.Module):
    """The classifier's penultimate layer as torchmetrics' feature extractor (images float 0..1)."""

    def __init__(self, classifier: ReferenceClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.head.in_features  # torchmetrics reads it instead of a dummy forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class FrechetDistance:
    """Fréchet distance of image sets to one real reference set, whose statistics are kept."""

    def __init__(self, classifier: ReferenceClassifier, real: torch.Tensor, batch: int = 512) -> None:
        self.device = next(classifier.parameters()).device
        self.batch = batch
        classifier.eval()
        self.metric = FrechetInceptionDistance(feature=_Features(classifier), normalize=True,
                                               reset_real_features=False).to(self.device)
        self._update(real, real=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> float:
        """FD between `images` (0..1) and the real set."""
        self.metric.reset()  # clears the generated side only (reset_real_features=False)
        self._update(images, real=False)
        return float(self.metric.compute())

    def _update(self, images: torch.Tensor, real: bool) -> None:
        with torch.no_grad():
            for i in range(0, len(images), self.batch):
                self.metric.update(images[i:i + self.batch].to(self.device), real=real)


@dataclass
class QualityReport:
    """Every number of one evaluation, and the counts behind them."""

    samples: int
    frechet: float
    frechet_real: float
    frechet_noise: float
    frechet_normalised: float
    confidence: float
    class_entropy_bits: float
    class_entropy_max_bits: float
    class_counts: dict[str, int]
    held_out_samples: int
    classifier_accuracy: float
    class_accuracy: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def uniform_noise(count: int, shape: tuple[int, ...], seed: int = 12345) -> torch.Tensor:
    """Uniform noise in 0..1: the noise-vs-real baseline."""
    return torch.rand((count, *shape), generator=torch.Generator().manual_seed(seed))


def class_entropy_bits(predicted: torch.Tensor, classes: int) -> float:
    """Entropy in bits of the histogram of predicted classes."""
    counts = torch.bincount(predicted, minlength=classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def class_accuracy(reference: Reference, images: torch.Tensor, requested: torch.Tensor) -> float:
    """Share of generated images (0..1) that the classifier puts in the class they were asked for."""
    if len(images) != len(requested):
        raise ValueError(f"{len(images)} images but {len(requested)} requested labels")
    return classify_accuracy(reference.model, images, requested)


def evaluate_images(reference: Reference, images: torch.Tensor, requested: torch.Tensor | None = None) -> QualityReport:
    """Every metric for generated `images` in 0..1, with both baselines measured now, at the same count."""
    images = images.detach().float().cpu().clamp(0, 1)
    n = len(images)
    held_out = reference.split.held_out[:n]
    distance = FrechetDistance(reference.model, reference.split.train)
    fd, fd_real = distance(images), distance(held_out)
    fd_noise = distance(uniform_noise(n, tuple(images.shape[1:])))
    probabilities = predict(reference.model, images)
    predicted = probabilities.argmax(-1)
    classes = len(reference.class_names)
    counts = torch.bincount(predicted, minlength=classes).tolist()
    accuracy, asked_unknown = _requested_accuracy(reference, images, requested, classes)
    return QualityReport(
        samples=n, frechet=fd, frechet_real=fd_real, frechet_noise=fd_noise,
        frechet_normalised=(fd - fd_real) / max(fd_noise - fd_real, 1e-12),
        confidence=float(probabilities.max(-1).values.mean()),
        class_entropy_bits=class_entropy_bits(predicted, classes), class_entropy_max_bits=math.log2(classes),
        class_counts=dict(zip(reference.class_names, counts)), held_out_samples=len(held_out),
        classifier_accuracy=reference.held_out_accuracy,
        class_accuracy=accuracy, warnings=_warnings(n, len(held_out), asked_unknown))


def _requested_accuracy(reference: Reference, images: torch.Tensor, requested: torch.Tensor | None,
                        classes: int) -> tuple[float | None, int]:
    """The class accuracy over the samples asked for a class the classifier knows, and how many were not.

    A model may have more class embeddings than the data has classes (a digits model
    fine-tuned on the 3 shapes); samples of those extra classes have no right answer.
    """
    if requested is None:
        return None, 0
    requested = requested.cpu()
    known = (requested >= 0) & (requested < classes)
    unknown = int((~known).sum())
    if not known.any():
        return None, unknown
    return class_accuracy(reference, images[known], requested[known]), unknown


def _warnings(samples: int, held_out: int, asked_unknown: int = 0) -> list[str]:
    found = []
    if asked_unknown:
        found.append(f"{asked_unknown} samples were asked for classes the dataset does not have: the class "
                     f"accuracy counts the other {samples - asked_unknown}")
    if samples < STABLE_SAMPLES:
        found.append(f"only {samples} samples: the Fréchet distance is unstable below {STABLE_SAMPLES} "
                     f"(set eval.num_samples or --samples)")
    if held_out < samples:
        found.append(f"the real-vs-real baseline has only {held_out} held-out images against {samples} samples, "
                     f"so it reads a little high")
    return found
