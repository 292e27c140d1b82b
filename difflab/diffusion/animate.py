"""The denoising as an animated GIF: each frame is one sampling step.

A frame shows the batch's model inputs x_t in the top row and the model's
prediction of the clean images below, so the prediction can be seen settling
long before the noisy input does (the course's point about x0 predictions).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import torch
from PIL import Image

from difflab.diffusion.render import image_grid
from difflab.files import atomic_write_bytes
from difflab.runtime.sequences import evenly_spaced

FINAL_HOLD = 15
"""The last frame (the result) stays up this many frame times before the loop restarts."""


def frame_indices(steps: int, max_frames: int) -> list[int]:
    """At most `max_frames` step indices spread evenly over 0..steps-1, the last one always included."""
    return evenly_spaced(steps, max_frames)


def denoising_frame(x: torch.Tensor, prediction: torch.Tensor, value_range: tuple[float, float]) -> Image.Image:
    """One step: the inputs x_t (N, C, H, W) as the top row, the predicted x0 as the bottom row."""
    return image_grid(torch.cat([x, prediction]), value_range, nrow=len(x), scale=2)


def denoising_gif(inputs: list[torch.Tensor], predictions: list[torch.Tensor], value_range: tuple[float, float],
                  path: Path, max_frames: int = 60, frame_ms: int = 80) -> Path:
    """Write the trajectory (one input and one prediction batch per step) as a looping GIF at `path`."""
    if not inputs or len(inputs) != len(predictions):
        raise ValueError(f"need one prediction per input and at least one step; got {len(inputs)} inputs "
                         f"and {len(predictions)} predictions")
    if max_frames < 1:
        raise ValueError(f"max_frames = {max_frames}: must be at least 1")
    picks = frame_indices(len(inputs), max_frames)
    frames = [denoising_frame(inputs[i], predictions[i], value_range) for i in picks]
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * FINAL_HOLD]
    buffer = BytesIO()
    # PIL merges a frame identical to the one before into it (summing durations), so a sampler
    # that has converged early can give fewer frames than picked
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
