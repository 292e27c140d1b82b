"""Model screen: the knobs of BasicUNet, UNet2DModel or the AutoencoderKL (a VAE); its size, shapes,
compute and rough cost; starting from a pretrained source (train.init_from), where each setting of its
network comes from."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Label, Static

from difflab.jobs import launch

from .base import LabScreen
from .widgets import RecipeField

KINDS = {"basic-unet": "BasicUNet", "unet2d": "UNet2DModel", "autoencoder-kl": "AutoencoderKL"}
UNET, VAE = "unet2d", "autoencoder-kl"

# The knobs each kind reads (key, label, kinds); the others ignore them, so only the chosen kind's show.
KIND_FIELDS = [
    ("model.channels", "channels per level", ("basic-unet",)),
    ("model.kernel_size", "kernel size (odd)", ("basic-unet",)),
    ("model.block_out_channels", "block output channels per level", (UNET, VAE)),
    ("model.layers_per_block", "ResNet layers per block", (UNET, VAE)),
    ("model.down_block_types", "down block types (one per level)", (UNET,)),
    ("model.up_block_types", "up block types (one per level)", (UNET,)),
    ("model.norm_num_groups", "GroupNorm groups (divide every level)", (UNET, VAE)),
    ("model.attention_head_dim", "channels per attention head", (UNET,)),
    ("model.dropout", "dropout", (UNET,)),
    ("model.latent_channels", "latent channels (SD: 4)", (VAE,)),
    ("train.kl_weight", "KL weight beside the reconstruction (SD: 1e-6)", (VAE,)),
]


RECIPE_SECTIONS = {"dataset", "schedule", "model", "train", "sample"}


class ModelScreen(LabScreen):
    """[model]: the network's knobs; parameters, block shapes, FLOPs and a rough step cost."""

    SCREEN_NAME = "model"
    CSS_PATH = "model.tcss"

    def fields(self) -> list[RecipeField]:
        fields = [RecipeField("model.kind", "model", list(KINDS))]
        for key, label, kinds in KIND_FIELDS:
            field = RecipeField(key, label)
            field.add_class(*kinds)  # _show_kind_fields toggles fields by these classes
            fields.append(field)
        return fields + [
            RecipeField("train.batch_size", "batch size (for the estimate)"),
            RecipeField("dataset.image_size", "image size (pixels)"),
        ]

    def compose_output(self) -> ComposeResult:
        yield Static(id="headline")
        # markup off: messages quote recipe values such as ['DownBlock2D'] verbatim
        yield Static(id="rejected", markup=False)
        yield Label("output of each block (C×H×W)", classes="section-title")
        yield DataTable(id="blocks", show_cursor=False, zebra_stripes=True)
        yield Static(id="estimate")
        # shown only for a recipe that starts from a pretrained source: its network is the source's own
        yield Label(id="origins-title", classes="section-title", markup=False)
        # a Rich table in a Static wraps long values (block type lists) instead of cutting them
        yield Static(id="origins")

    def on_mount(self) -> None:
        # LabScreen.on_mount also runs (Textual dispatches on_mount along the MRO)
        self.watch(self.app, "recipe", self._show_kind_fields)
        for field in self.query(RecipeField):
            self.watch(field, "error", self._show_rejection, init=False)

    def make_probe(self):
        return launch.probe("model_probe:ModelProbe", recipe=self.app.recipe, recipe_dir=self.app.recipe_dir)

    def show_result(self, summary: dict) -> None:
        estimate = summary["estimate"]
        report = estimate.report
        self.query_one("#headline", Static).update(
            f"[b]{KINDS[report.kind]}[/b] · {report.parameters:,} parameters\n"
            f"{report.flops_per_image / 1e9:.3g} GFLOPs per image (forward) · input {_shape(report.input_shape)}"
            f"{_latent_text(report)}")
        table = self.query_one("#blocks", DataTable)
        table.clear(columns=True)
        table.add_columns("block", "output")
        for name, shape in report.blocks:
            table.add_row(name, _shape(shape))
        self.query_one("#estimate", Static).update(_estimate_text(estimate, self.app.recipe.train.batch_size))
        self._show_origins(summary.get("origins", []), summary.get("source"))

    def _show_origins(self, origins: list, source: str | None) -> None:
        """Each network and schedule setting, its value and where it came from: the source, the recipe
        or a default (a recipe changes only what it sets; the rest is the source's own)."""
        title, shown = self.query_one("#origins-title", Label), self.query_one("#origins", Static)
        title.display = shown.display = source is not None
        if source is None:
            return
        title.update(f"where each setting comes from ('source': train.init_from = {source})")
        recipe_keys = [row for row in origins if not _is_network_key(row[0])]
        network_keys = [(key.partition(".")[2], value, origin) for key, value, origin in origins
                        if _is_network_key(key)]
        shown.update(Text("\n").join([*map(_origin_line, recipe_keys),
                                       Text("the source network's own settings (config.json):", style="bold"),
                                       *map(_origin_line, network_keys)]))

    def _show_kind_fields(self, recipe) -> None:
        """Show the chosen kind's knobs and hide the other kinds'."""
        for field in self.query(RecipeField):
            if field.key != "model.kind" and field.classes & set(KINDS):
                field.display = field.has_class(recipe.model.kind)

    def _show_rejection(self, error: str) -> None:
        """Say why the report did not update: a rejected change leaves the recipe (and report) as it was."""
        still_wrong = [field.error for field in self.query(RecipeField) if field.error]
        latest = error or (still_wrong[-1] if still_wrong else "")
        rejected = self.query_one("#rejected", Static)
        rejected.display = bool(latest)
        rejected.update(f"last change rejected: {latest}")


def _estimate_text(estimate, batch: int) -> str:
    """The step cost, saying where each number comes from: a small batch timed just now and scaled
    (it moves with whatever else the machine runs: 270 ms and 2.4 s were seen for one setting on a
    busy 2-core box), and the real step the probe took, beside what the estimate said for it."""
    text = (f"one training step at batch {batch:,} on {estimate.device}: ~{_duration(estimate.step_seconds)} "
            f"(a small batch timed now, scaled), ~{_megabytes(estimate.memory_bytes)}")
    if (real := getattr(estimate, "measured", None)) is not None:  # None: not even one image fit
        text += (f"; a real step at batch {real.batch:,} took {_duration(real.seconds)} "
                 f"(estimated {_duration(real.estimated_seconds)})")
        if getattr(real, "memory_bytes", None) and estimate.device.startswith("cuda"):  # a CPU's resident set says little
            text += f", peak {_megabytes(real.memory_bytes)} (estimated {_megabytes(real.estimated_bytes)})"
    return text + ". Times vary with the machine's other work; the training screen shows real ones."


def _latent_text(report) -> str:
    """A VAE's latent (half of its quant_conv's output: the mean beside the log-variance) and how
    many times fewer numbers it holds than the image."""
    moments = next((shape for name, shape in report.blocks if name.startswith("quant_conv")), None)
    if report.kind != VAE or moments is None:
        return ""
    latent = (moments[0] // 2, *moments[1:])
    factor = math.prod(report.input_shape) / math.prod(latent)
    return f"\nlatent {_shape(latent)}: {factor:.3g}× fewer numbers than the image"


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _megabytes(size: int) -> str:
    megabytes = size / 1e6
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:,.0f} MB"


def _is_network_key(key: str) -> bool:
    """A setting of the source's network config that no recipe key says (shown as 'UNet2DModel.key')."""
    return key.partition(".")[0] not in RECIPE_SECTIONS


def _origin_line(row: tuple) -> Text:
    """'key = value (from)': one line per setting that wraps in a narrow pane (a table's columns
    left the values two cells at 80 columns)."""
    key, value, origin = row
    return Text.assemble(key, " = ", str(value), (f"  ({origin})", "dim"))
