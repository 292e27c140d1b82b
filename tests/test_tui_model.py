"""The model screen, driven with Textual's Pilot: choose a network, read what it costs."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Select, Static

from difflab.screens.app import DifflabApp
from difflab.screens.model import ModelScreen
from difflab.screens.widgets import RecipeField
from tests.conftest import wait_for_probe

pytestmark = pytest.mark.anyio


def field(app, key: str) -> RecipeField:
    return app.screen.query_one(f"#field-{key.replace('.', '-')}", RecipeField)


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def block_names(app) -> list[str]:
    table = app.screen.query_one("#blocks", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def test_the_course_models_their_sizes_and_a_rejected_change():
    # one app for the whole story: each probe builds and times a real model, seconds on 2 cores
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("3")
        assert isinstance(app.screen, ModelScreen)
        await wait_for_probe(pilot)
        assert "BasicUNet · 309,057 parameters" in text(app, "#headline")  # the course's ~309k
        assert "input 1×28×28" in text(app, "#headline")
        assert block_names(app)[0] == "down_layers.0"
        assert "one training step at batch 128 on cpu" in text(app, "#estimate")
        assert not field(app, "model.norm_num_groups").display

        field(app, "model.kind").query_one(Select).value = "unet2d"
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        assert "UNet2DModel · 1,707,009 parameters" in text(app, "#headline")  # the course's ~1.7M
        assert "down_blocks.1 AttnDownBlock2D" in block_names(app)
        assert field(app, "model.norm_num_groups").display and not field(app, "model.channels").display

        groups = field(app, "model.norm_num_groups")
        groups.query_one(Input).value = "24"
        await pilot.pause(0.2)
        assert "model.norm_num_groups = 24" in groups.error
        assert app.recipe.model.norm_num_groups == 32
        assert "last change rejected: model.norm_num_groups = 24" in text(app, "#rejected")
        assert "1,707,009 parameters" in text(app, "#headline")  # the report still shows the kept recipe

        groups.query_one(Input).value = "16"
        await pilot.pause(0.2)
        assert groups.error == "" and not app.screen.query_one("#rejected").display


def test_the_model_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    async def settle(pilot):
        await pilot.press("3")  # here, not snap_compare's press=: that runs after run_before
        await wait_for_probe(pilot)
        for box in pilot.app.query(Input):
            box.cursor_blink = False
        # the measured step time varies from run to run; the rest of the screen does not
        pilot.app.screen.query_one("#estimate", Static).update(
            "one training step at batch 128 on cpu: ~X s, ~Y MB (rough)")
        await pilot.pause(0.1)

    assert snap_compare(DifflabApp(), terminal_size=(100, 32), run_before=settle)


def test_the_step_estimate_says_where_its_numbers_come_from():
    """A timed-and-scaled estimate moves with the machine's load (270 ms, then 2.4 s, for one setting):
    the screen says it was timed now on a small batch, and shows a real step beside it when one was taken."""
    from types import SimpleNamespace

    from difflab.screens.model import _estimate_text

    estimate = SimpleNamespace(device="cpu", step_seconds=0.27, memory_bytes=120e6, measured=None)
    text = _estimate_text(estimate, 128)
    assert "one training step at batch 128 on cpu: ~270 ms (a small batch timed now, scaled)" in text
    assert "real step" not in text and "vary" in text
    estimate.measured = SimpleNamespace(batch=32, seconds=2.4, estimated_seconds=0.07)
    assert "a real step at batch 32 took 2.4 s (estimated 70 ms)" in _estimate_text(estimate, 128)


VAE_RECIPE = """[dataset]
source = "shapes"
channels = 3
value_range = "-1..1"
image_size = 16
[model]
kind = "autoencoder-kl"
block_out_channels = [16, 32, 32]
layers_per_block = 1
norm_num_groups = 8
[train]
batch_size = 16
"""


async def test_a_vae_shows_its_own_knobs_and_its_latent_and_nothing_is_cut_at_80_by_24(tmp_path, monkeypatch):
    from tests.test_tui_fit import cut_widgets

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "vae.toml"
    recipe.write_text(VAE_RECIPE)
    app = DifflabApp(recipe)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_for_probe(pilot)
        assert "AutoencoderKL · " in text(app, "#headline")
        # 3x16x16 pixels through two halvings: 4x4x4, twelve times fewer numbers
        assert "input 3×16×16" in text(app, "#headline") and "latent 4×4×4: 12× fewer" in text(app, "#headline")
        assert "quant_conv (mean, logvar)" in block_names(app)
        shown = {key for key in ("model.block_out_channels", "model.layers_per_block", "model.norm_num_groups",
                                 "model.latent_channels", "train.kl_weight") if field(app, key).display}
        assert len(shown) == 5, shown
        assert not any(field(app, key).display for key in ("model.down_block_types", "model.attention_head_dim",
                                                            "model.channels", "model.dropout"))
        assert cut_widgets(app.screen) == []

        field(app, "model.kind").query_one(Select).value = "unet2d"
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        assert "UNet2DModel · " in text(app, "#headline") and "latent" not in text(app, "#headline")
        assert field(app, "model.down_block_types").display and not field(app, "model.latent_channels").display
        assert not field(app, "train.kl_weight").display and field(app, "model.norm_num_groups").display
