"""Schedule screen: how training corrupts images — the toy linear mix beside DDPM's Gaussian schedule.

The curves are √ᾱ_t (how much of the image is left) and √(1−ᾱ_t) (how much noise),
and log SNR, for the recipe's schedule with a second one overlaid, as chapter 4 of
the course plots them; below, one image noised at a few timesteps by both processes.
A latent recipe adds the same image noised in its VAE's latent space and decoded, under
the pixel-noised row: latent noise decodes to blotches and colour shifts, not to grain.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Select, Static
from textual_plot import HiResMode, PlotWidget

from difflab.jobs import launch
from difflab.recipe import ScheduleConfig

from .base import LabScreen
from .widgets import RecipeField, TerminalImage

BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
TOO_LITTLE_NOISE = "too little noise"
# The comparison is not part of the recipe (changing it never marks the recipe modified):
# DDPMScheduler's defaults (β 1e-4 → 0.02) per beta schedule, plus chapter 4's β 0.001 → 0.004 try.
COMPARISONS: dict[str, dict | None] = {
    "none": None,
    **{name: {"beta_schedule": name} for name in BETA_SCHEDULES},
    TOO_LITTLE_NOISE: {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.004},
}
DEFAULT_COMPARISON = "linear"  # the course's own comparison: DDPMScheduler(1000) as it comes

# Signal in blue, noise in orange, log SNR in green; the comparison in darker shades of each.
COLOURS = {"signal": ("#4fc3f7", "#2e6a80"), "noise": ("#ffa657", "#8a5a30"), "snr": ("#9ccc65", "#55702f")}
PLOT_POINTS = 120  # about two samples per plot column at 100 columns; braille lines need no more


class ScheduleScreen(LabScreen):
    """[schedule]: √ᾱ_t, √(1−ᾱ_t) and log SNR against t, and the toy and DDPM corruption of one image."""

    SCREEN_NAME = "schedule"
    CSS_PATH = "schedule.tcss"
    # below this width two plots side by side are too narrow to read, so they stack
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (96, "-wide")]
    _chosen_comparison = DEFAULT_COMPARISON
    # what the newest probe was asked for: earlier probes' results are dropped (LabScreen.rerun_probe)
    _probed: tuple[ScheduleConfig, ScheduleConfig | None] | None = None

    def fields(self) -> list[Widget]:
        return [
            RecipeField("schedule.kind", "corruption used for training", ["toy", "ddpm"]),
            RecipeField("schedule.num_train_timesteps", "timesteps T"),
            RecipeField("schedule.beta_schedule", "β schedule", BETA_SCHEDULES),
            # next to the β schedule it is compared with
            Vertical(
                Label("compare with (not in the recipe)", classes="field-label"),
                Select([(name, name) for name in COMPARISONS], value=DEFAULT_COMPARISON,
                       allow_blank=False, id="compare"),
                id="compare-field"),
            RecipeField("schedule.beta_start", "β at the first timestep"),
            RecipeField("schedule.beta_end", "β at the last timestep"),
        ]

    def compose_output(self) -> ComposeResult:
        with Horizontal(id="plots"):
            with Vertical(classes="plot-box"):
                yield Label("signal √ᾱ_t, noise √(1−ᾱ_t)", classes="plot-title")
                yield _plot("amounts")
            with Vertical(classes="plot-box"):
                yield Label("log SNR_t = log ᾱ_t/(1−ᾱ_t)", classes="plot-title")
                yield _plot("log-snr")
        yield Static(id="key")
        yield Label(id="ddpm-title", classes="strip-title")
        yield TerminalImage(id="ddpm-strip", classes="strip")
        yield Label(id="latent-title", classes="strip-title latent")
        yield TerminalImage(id="latent-strip", classes="strip latent")
        yield Label(id="latent-note", classes="latent", markup=False)
        yield Label(id="toy-title", classes="strip-title")
        yield TerminalImage(id="toy-strip", classes="strip")
        yield Static(id="timesteps")

    def on_mount(self) -> None:
        # LabScreen.on_mount also runs (Textual dispatches on_mount along the MRO)
        self.query(".latent").set(display=False)  # a latent recipe's row, once its probe says so

    def make_probe(self):
        self._probed = (self.app.recipe.schedule, self.comparison())
        return launch.probe("schedule_probe:ScheduleProbe", recipe=self.app.recipe, compare=self._probed[1],
                            recipe_dir=self.app.recipe_dir, strip_steps=8, points=PLOT_POINTS)

    def comparison(self) -> ScheduleConfig | None:
        """The schedule chosen for comparison, with the recipe's T so both share the t axis."""
        choice = COMPARISONS[self._chosen_comparison]
        if choice is None:
            return None
        return ScheduleConfig(kind="ddpm", num_train_timesteps=self.app.recipe.schedule.num_train_timesteps,
                              **choice)

    @on(Select.Changed, "#compare")
    def _comparison_changed(self, event: Select.Changed) -> None:
        # a Select also posts Changed when it is first mounted; only a real change needs a probe
        if self._chosen_comparison != event.value:
            self._chosen_comparison = event.value
            self.rerun_probe()

    def show_result(self, summary: dict) -> None:
        schedule, compare = self._probed
        curves, last = summary["curves"], schedule.num_train_timesteps - 1
        amounts = self._draw("#amounts", curves,
                             [("sqrt_alpha_bar", "signal"), ("sqrt_one_minus_alpha_bar", "noise")])
        amounts.set_xlimits(0, last)
        amounts.set_ylimits(0, 1)
        amounts.set_yticks([0, 0.5, 1])  # automatic 0.2 steps crowd an 8-row plot, and 0.25 prints as 0.2
        # log SNR autoscales: about ±10 for linear β, far lower at the end for the cosine schedule
        self._draw("#log-snr", curves, [("log_snr", "snr")]).set_xlimits(0, last)
        self.query_one("#key", Static).update(_key(schedule, compare))
        self._show_strips(summary, schedule)

    def _draw(self, plot_id: str, curves: dict, series: list[tuple[str, str]]) -> PlotWidget:
        """Replot `series` (curve name, colour) of the comparison (dim) and then the recipe's schedule."""
        plot = self.query_one(plot_id, PlotWidget)
        plot.clear()
        # the comparison first, so the recipe's own curves are drawn over it where they meet
        for which, shade in (("compare", 1), ("schedule", 0)):
            for name, colour in series if which in curves else []:
                plot.plot(*curves[which][name], line_style=COLOURS[colour][shade], hires_mode=HiResMode.BRAILLE)
        return plot

    def _show_strips(self, summary: dict, schedule: ScheduleConfig) -> None:
        steps, latent = summary["timesteps"], summary.get("latent")
        used = "  [i](used for training)[/i]"
        trains = {("latent" if latent and schedule.kind == "ddpm" else schedule.kind): used}
        pixels = "DDPM on pixels" if latent else "DDPM"
        self.query_one("#ddpm-title", Label).update(f"{pixels}: √ᾱ_t·x₀ + √(1−ᾱ_t)·ε{trains.get('ddpm', '')}")
        self.query_one("#toy-title", Label).update(f"toy: x·(1−a) + noise·a, a = t/(T−1){trains.get('toy', '')}")
        self.query_one("#ddpm-strip", TerminalImage).image = summary["strips"]["ddpm"]
        self.query_one("#toy-strip", TerminalImage).image = summary["strips"]["toy"]
        self._show_latent_strip(latent, trains.get("latent", ""))
        rows = "all three" if latent and latent.strip is not None else "both"
        self.query_one("#timesteps", Static).update(f"{rows} at t = " + ", ".join(str(t) for t in steps))

    def _show_latent_strip(self, latent, used: str) -> None:
        """A latent recipe's row: the image encoded, noised as z_t, decoded; or why it is missing."""
        self.query(".latent").set(display=latent is not None)
        if latent is None:
            return
        shape = "×".join(str(n) for n in latent.latent_shape)
        self.query_one("#latent-title", Label).update(
            f"DDPM on latents{f' ({shape})' if shape else ''}, decoded: √ᾱ_t·z₀ + √(1−ᾱ_t)·ε{used}")
        self.query_one("#latent-strip", TerminalImage).image = latent.strip
        self.query_one("#latent-strip").display = latent.strip is not None
        note = self.query_one("#latent-note", Label)
        note.update(latent.note)
        note.display = bool(latent.note)


def _plot(plot_id: str) -> PlotWidget:
    """A plot with just enough margin for its tick labels (titles sit above it as Labels)."""
    plot = PlotWidget(id=plot_id, allow_pan_and_zoom=False)
    plot.can_focus = False  # nothing to pan or zoom: not a Tab stop (it would show no focus)
    # set_reactive: the margin watchers need the plot's children, which exist only once mounted
    plot.set_reactive(PlotWidget.margin_top, 0)
    plot.set_reactive(PlotWidget.margin_bottom, 1)
    plot.set_reactive(PlotWidget.margin_left, 5)
    return plot


def _key(schedule: ScheduleConfig, compare: ScheduleConfig | None) -> str:
    """The plots' legend: which colour is which curve, and which shade is which schedule."""
    swatches = "  ".join(f"[{COLOURS[name][0]}]━━[/] {text}"
                         for name, text in (("signal", "√ᾱ"), ("noise", "√(1−ᾱ)"), ("snr", "log SNR")))
    lines = f"{swatches}   against timestep t\n[b]bright[/b]: {_describe(schedule)}"
    if compare is not None:
        lines += f"   [b]dim[/b]: {_describe(compare)}"
    return lines


def _describe(schedule: ScheduleConfig) -> str:
    """A schedule in a few words: its β schedule and the βs it uses."""
    if schedule.beta_schedule == "squaredcos_cap_v2":
        return "squaredcos_cap_v2"  # the cosine schedule ignores beta_start and beta_end
    return f"{schedule.beta_schedule} β {schedule.beta_start:g}→{schedule.beta_end:g}"
