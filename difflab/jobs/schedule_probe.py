"""The schedule screen's probe: a schedule's curves (and a second one's to compare), and one
image noised at N timesteps by DDPM and by the toy mix; for a latent recipe, also noised in the
VAE's latent space and decoded, so pixel noise and latent noise sit side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.diffusion.data import load_dataset
from difflab.diffusion.latents import open_codec, parse_vae_spec
from difflab.diffusion.render import image_grid
from difflab.diffusion.schedules import noised_strip, schedule_curves
from difflab.errors import InputError
from difflab.jobs.vae_source import cached_location
from difflab.recipe import Recipe, ScheduleConfig
from difflab.runtime.sequences import evenly_spaced
from difflab.runtime.worker import JobContext


@dataclass
class LatentStrip:
    """A latent recipe's noised strip: decoded images (PIL), or a note saying why there are none."""

    vae: str  # latent.vae as the recipe writes it
    strip: Any = None
    latent_shape: tuple[int, ...] = ()  # (channels, h, w) of the image's latent
    note: str = ""


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
        summary = {"curves": curves, "timesteps": steps, "strips": strips}
        if self.recipe.latent.vae:
            summary["latent"] = self._latent_strip(image, ddpm, steps, data.value_range)
        return "finished", summary

    def _latent_strip(self, image, ddpm: ScheduleConfig, steps: list[int], value_range) -> LatentStrip:
        """The image encoded, noised at `steps` in latent space (DDPM, same seed) and decoded; or,
        without a VAE at hand, one line saying why (a built-in VAE is never trained by a probe)."""
        vae = self.recipe.latent.vae
        try:
            spec = parse_vae_spec(vae, self.recipe_dir)
            location = cached_location(spec)
            if location is None:
                command = f"difflab run {spec.recipe}" + (f" --profile {spec.profile}" if spec.profile else "")
                return LatentStrip(vae, note=f"the VAE '{vae}' is not trained yet: the first run trains it "
                                             f"(or: {command})")
            codec = open_codec(self.recipe, location, self.device)
            latent = codec.encode(image.unsqueeze(0).to(self.device))[0]
            decoded = codec.decode(noised_strip(latent, ddpm, steps, seed=self.recipe.seed))
        except InputError as error:  # the curves and pixel strips still show; the run would refuse it
            return LatentStrip(vae, note=str(error))
        return LatentStrip(vae, image_grid(decoded, value_range, nrow=len(steps)), tuple(latent.shape))

    def _curves(self, cfg: ScheduleConfig) -> dict[str, tuple[list[float], list[float]]]:
        c = schedule_curves(cfg)
        t = c.timesteps.tolist()
        return {name: decimate(t, getattr(c, name).tolist(), self.points)
                for name in ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr")}


def decimate(xs: list[float], ys: list[float], points: int) -> tuple[list[float], list[float]]:
    """At most `points` evenly spaced samples of a series (plots need ~2 per column, not 1000)."""
    picks = evenly_spaced(len(xs), points)
    return [xs[i] for i in picks], [ys[i] for i in picks]
