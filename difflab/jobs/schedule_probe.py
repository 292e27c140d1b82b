"""The schedule screen's probe: a schedule's curves (and a second one's to compare), and one
image noised at N timesteps by DDPM and by the toy mix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.diffusion.data import load_dataset
from difflab.diffusion.render import image_grid
from difflab.diffusion.schedules import noised_strip, schedule_curves
from difflab.recipe import Recipe, ScheduleConfig
from difflab.runtime.sequences import evenly_spaced
from difflab.runtime.worker import JobContext


@dataclass
class ScheduleProbe:
    """Curves of a schedule (and a second one to compare), and one image noised at N timesteps."""

    recipe: Recipe
    compare: ScheduleConfig | None = None
    recipe_dir: Path | None = None
    strip_steps: int = 8
    points: int = 200
    name: str = "schedule"
    device: str = "cpu"

    def run(self, ctx: JobContext) -> tuple[str, dict[str, Any]]:
        ddpm = self.recipe.schedule.model_copy(update={"kind": "ddpm"})
        toy = self.recipe.schedule.model_copy(update={"kind": "toy"})
        curves = {"schedule": self._curves(ddpm)}
        if self.compare is not None:
            curves["compare"] = self._curves(self.compare.model_copy(update={"kind": "ddpm"}))
        data = load_dataset(self.recipe.dataset.model_copy(update={"limit": 0}), self.recipe_dir, self.recipe.seed,
                            self.recipe.audio)
        image = data.images[0]
        last = ddpm.num_train_timesteps - 1
        steps = [round(i * last / (self.strip_steps - 1)) for i in range(self.strip_steps)]
        strips = {kind: image_grid(noised_strip(image, cfg, steps, seed=self.recipe.seed,
                                                value_range=data.value_range), data.value_range, nrow=len(steps))
                  for kind, cfg in (("ddpm", ddpm), ("toy", toy))}
        return "finished", {"curves": curves, "timesteps": steps, "strips": strips}

    def _curves(self, cfg: ScheduleConfig) -> dict[str, tuple[list[float], list[float]]]:
        c = schedule_curves(cfg)
        t = c.timesteps.tolist()
        return {name: decimate(t, getattr(c, name).tolist(), self.points)
                for name in ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr")}


def decimate(xs: list[float], ys: list[float], points: int) -> tuple[list[float], list[float]]:
    """At most `points` evenly spaced samples of a series (plots need ~2 per column, not 1000)."""
    picks = evenly_spaced(len(xs), points)
    return [xs[i] for i in picks], [ys[i] for i in picks]
