"""The lab's shell and dataset screen, driven with Textual's Pilot."""

from __future__ import annotations

import subprocess
import sys

import pytest
from textual.widgets import DataTable, DirectoryTree, Input, Select, Static

from difflab.cli.main import main
from difflab.recipe import load_recipe, recipe_to_toml
from difflab.screens.app import DifflabApp
from difflab.screens.dataset import DatasetScreen
from difflab.screens.dialogs import (
    HelpScreen,
    OpenRecipeScreen,
    RecipeBrowserScreen,
    SaveAsScreen,
    UnsavedChangesScreen,
)
from difflab.screens.widgets import RecipeField, TerminalImage
from tests.conftest import wait_for_probe

pytestmark = pytest.mark.anyio


def field(app, key: str) -> RecipeField:
    return app.screen.query_one(f"#field-{key.replace('.', '-')}", RecipeField)


async def test_the_lab_opens_on_the_dataset_screen_with_real_samples():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        assert isinstance(app.screen, DatasetScreen)
        assert app.screen.query_one("#samples", TerminalImage).image is not None
        facts = str(app.screen.query_one("#facts", Static).render())
        assert "1,797 images of 1×28×28" in facts
        assert app.screen.query_one("#classes", DataTable).row_count == 10
        assert app.device_label == "cpu"


async def test_number_keys_and_the_tab_bar_switch_screens():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        for key, mode in (("2", "schedule"), ("3", "model"), ("1", "dataset")):
            await pilot.press(key)
            assert app.current_mode == mode
        await pilot.click("#tab-model")
        assert app.current_mode == "model"


async def test_changing_the_source_reloads_the_dataset_on_the_worker():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        field(app, "dataset.source").query_one(Select).value = "shapes"
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        assert app.recipe.dataset.source == "shapes" and app.dirty
        assert "shapes: 1,000 images" in str(app.screen.query_one("#facts", Static).render())
        assert app.screen.query_one("#classes", DataTable).row_count == 3


async def test_a_folder_with_brackets_in_its_name_is_named_whole(tmp_path):
    from PIL import Image

    folder = tmp_path / "pics [v2]"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (60 * i, 90, 200)).save(folder / f"{i}.png")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        assert app.set_recipe_value("dataset.path", str(folder)) == ""
        assert app.set_recipe_value("dataset.source", "folder") == ""
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        facts = str(app.screen.query_one("#facts", Static).render())
        assert "4 images" in facts and "[v2]" in facts, facts


async def test_an_invalid_value_shows_the_headless_message_and_keeps_the_recipe():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        size = field(app, "dataset.image_size")
        size.query_one(Input).value = "-5"
        await pilot.pause(0.2)
        assert "dataset.image_size = -5: input should be greater than 0" in size.error
        assert app.recipe.dataset.image_size == 28
        size.query_one(Input).value = "32"
        await pilot.pause(0.2)
        assert size.error == "" and app.recipe.dataset.image_size == 32


async def test_a_missing_folder_is_a_notification_and_the_app_keeps_running(tmp_path):
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        field(app, "dataset.path").query_one(Input).value = str(tmp_path / "nowhere")
        await pilot.pause(0.2)
        field(app, "dataset.source").query_one(Select).value = "folder"
        await pilot.pause(0.2)
        await wait_for_probe(pilot)
        messages = [n.message for n in app._notifications]
        assert any("folder not found" in m for m in messages), messages
        field(app, "dataset.source").query_one(Select).value = "digits"
        await pilot.pause(0.5)
        await wait_for_probe(pilot)
        assert "digits" in str(app.screen.query_one("#facts", Static).render())


async def test_help_explains_each_screen():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_open_a_builtin_edit_it_and_save_it_as_a_file_the_runner_reads(tmp_path):
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("ctrl+b")
        assert isinstance(app.screen, RecipeBrowserScreen)
        names = [r.name for r in app.screen.recipes]
        app.screen.query_one("OptionList").highlighted = names.index("ddpm-rgb-32")
        await pilot.press("enter")
        assert app.recipe.schedule.kind == "ddpm" and app.recipe_path.name == "ddpm-rgb-32.toml"
        await wait_for_probe(pilot)
        field(app, "dataset.num_images").query_one(Input).value = "200"
        await pilot.pause(0.2)
        assert app.dirty
        await pilot.press("ctrl+s")  # a built-in is never overwritten: save asks for a new name
        assert isinstance(app.screen, SaveAsScreen)
        target = tmp_path / "mine.toml"
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert not app.dirty and app.recipe_path == target
    saved = load_recipe(target)
    assert saved.dataset.num_images == 200 and saved.schedule.kind == "ddpm"
    assert target.read_text() == recipe_to_toml(saved)


async def test_opening_a_bad_recipe_is_a_notification_not_a_crash(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlrr = 1\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for_probe(pilot)
        app.open_recipe(bad)
        await pilot.pause(0.1)
        messages = [n.message for n in app._notifications]
        assert any("train.lrr: unknown key" in m for m in messages), messages
        assert app.recipe_path is None


async def test_a_message_with_brackets_is_shown_whole_not_read_as_markup(tmp_path):
    from textual.widgets._toast import Toast

    app = DifflabApp()
    async with app.run_test(size=(100, 32), notifications=True) as pilot:  # run_test hides toasts by default
        await wait_for_probe(pilot)
        message = "runs/a [copy]/model: make [model] match ['conv_in']"
        app.screen.notify(message, title="cannot load", severity="error")  # as a screen sends it
        await pilot.pause(0.1)
        shown = " ".join(str(toast.render()) for toast in app.screen.query(Toast))
        assert message in " ".join(shown.split()), shown


async def test_every_field_label_on_every_screen_is_shown_whole():
    from textual.widgets import Label

    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        for key in "1234567":
            await pilot.press(key)
            await pilot.pause(0.2)
            for label in app.screen.query(".field-label").results(Label):
                text, size = str(label.render()), label.size
                if text and size.area:  # shown (a hidden field has no size)
                    room = label.parent.content_size.width
                    assert size.width <= room and size.width * size.height >= len(text), (key, text, size, room)


def test_difflab_with_a_bad_recipe_exits_2_before_opening_the_screen(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    assert main([str(bad)]) == 2
    assert "train.lr = -1" in capsys.readouterr().err


def test_the_app_module_does_not_import_torch():
    code = ("import sys\nimport difflab.screens.app\n"
            "heavy = [m for m in ('torch', 'diffusers', 'torchvision') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_dataset_screen_snapshot(snap_compare, monkeypatch):
    monkeypatch.setenv("COLORTERM", "truecolor")  # the status line names the colours the terminal has
    async def settle(pilot):
        await wait_for_probe(pilot)
        for widget in pilot.app.screen.query(Input):
            widget.cursor_blink = False
        await pilot.pause(0.1)

    assert snap_compare(DifflabApp(), terminal_size=(100, 32), run_before=settle)


async def test_showing_the_recipe_in_a_field_never_writes_a_stale_value_back():
    """A field shows the recipe's value without reporting it as an edit: the Changed that setting
    the Input posts, handled after the recipe moved on, wrote the old value back (fast typing into
    train.batch_size, shown on two screens, then made the recipe go 1, 16, 1, 16, ... for ever)."""
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("3")
        batch = field(app, "train.batch_size")
        box = batch.query_one(Input)
        box.focus()  # a focused field is not refreshed by the next change
        await pilot.pause()
        with box.prevent(Input.Changed):
            box.value = "999"  # what a person was typing
        batch.refresh_value()  # shows 128; its Input.Changed, if any, is handled after the next line
        train = app.recipe.train.model_copy(update={"batch_size": 64})
        app.recipe = app.recipe.model_copy(update={"train": train})
        await pilot.pause(0.3)
        assert app.recipe.train.batch_size == 64


# ------------------------------------------------------------ no lost work


async def edited(pilot, app) -> None:
    """The recipe with an unsaved change, as a person leaves it after typing into a field."""
    await wait_for_probe(pilot)
    assert app.set_recipe_value("dataset.limit", 100) == ""
    assert app.dirty


async def test_opening_a_builtin_over_unsaved_changes_asks_and_discard_opens_it():
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await edited(pilot, app)
        await pilot.press("ctrl+b")
        names = [r.name for r in app.screen.recipes]
        app.screen.query_one("OptionList").highlighted = names.index("ddpm-rgb-32")
        await pilot.press("enter")
        assert isinstance(app.screen, UnsavedChangesScreen)
        assert app.recipe.dataset.limit == 100  # nothing replaced while it asks
        await pilot.press("d")
        await pilot.pause(0.1)
        assert app.recipe_path.name == "ddpm-rgb-32.toml" and not app.dirty
        assert app.recipe.schedule.kind == "ddpm"


async def test_cancel_keeps_the_edited_recipe_and_its_changes(tmp_path):
    other = tmp_path / "other.toml"
    other.write_text("[train]\nepochs = 7\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await edited(pilot, app)
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, OpenRecipeScreen)
        app.screen.query_one("#path", Input).value = str(other)
        await pilot.press("enter")
        assert isinstance(app.screen, UnsavedChangesScreen)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.dirty and app.recipe_path is None and app.recipe.dataset.limit == 100
        assert app.recipe.train.epochs != 7


async def test_save_writes_the_changes_to_their_file_then_opens_the_other(tmp_path):
    mine, other = tmp_path / "mine.toml", tmp_path / "other.toml"
    other.write_text("[train]\nepochs = 7\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        app.save_to(mine)
        await edited(pilot, app)
        app.open_recipe(other)
        await pilot.pause(0.1)
        assert isinstance(app.screen, UnsavedChangesScreen)
        await pilot.click("#save")
        await pilot.pause(0.1)
        assert app.recipe_path == other and app.recipe.train.epochs == 7 and not app.dirty
    assert load_recipe(mine).dataset.limit == 100


async def test_save_of_a_recipe_without_a_file_asks_for_its_name_first(tmp_path):
    target, other = tmp_path / "kept.toml", tmp_path / "other.toml"
    other.write_text("[train]\nepochs = 7\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await edited(pilot, app)
        app.open_recipe(other)
        await pilot.pause(0.1)
        await pilot.press("s")
        assert isinstance(app.screen, SaveAsScreen)
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.recipe_path == other and app.recipe.train.epochs == 7
    assert load_recipe(target).dataset.limit == 100


async def test_an_unchanged_recipe_is_replaced_without_a_question(tmp_path):
    other = tmp_path / "other.toml"
    other.write_text("[train]\nepochs = 7\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        app.open_recipe(other)
        await pilot.pause(0.1)
        assert not isinstance(app.screen, UnsavedChangesScreen) and app.recipe.train.epochs == 7


async def test_a_field_being_edited_shows_the_newly_opened_recipe(tmp_path):
    """The inversion source typed under one recipe stayed after loading another."""
    other = tmp_path / "other.toml"
    other.write_text("[invert]\nsource = 'runs/theirs'\n")
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("7")
        source = field(app, "invert.source").query_one(Input)
        source.focus()
        source.value = "runs/mine"
        await pilot.pause(0.1)
        await pilot.press("ctrl+o")  # straight from the field: focus comes back to it afterwards
        app.screen.query_one("#path", Input).value = str(other)
        await pilot.press("enter", "d")
        await pilot.pause(0.2)
        assert app.recipe.invert.source == "runs/theirs"
        assert source.value == "runs/theirs"


async def test_open_starts_in_the_working_folder_and_lists_only_folders_and_recipes(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("ctrl+b", "enter")  # a built-in: its folder is inside the installed package
        await pilot.pause(0.1)
        await pilot.press("ctrl+o")
        tree = app.screen.query_one(DirectoryTree)
        assert tree.path == tmp_path
        await pilot.pause(0.3)
        shown = sorted(str(node.label) for node in tree.root.children)
        assert shown == ["mine.toml", "runs"], shown


async def test_a_message_that_names_the_cli_resume_also_names_the_lab_key():
    """A stopped run was a dead end in the lab: the engine's message named only `difflab run --resume`."""
    app = DifflabApp()
    async with app.run_test(size=(100, 32)) as pilot:
        app.notify("runs/a already holds a run; choose another folder or continue it with "
                   "`difflab run --resume runs/a`", severity="error")
        app.notify("stopped; `c` on the training screen (4) or `difflab run --resume runs/a` continues it")
        await pilot.pause(0.1)
        first, second = [n.message for n in app._notifications]
        assert first.endswith("(in the lab: `c` on the training screen (4))")
        assert second.count("`c` on the training screen (4)") == 1  # said once, not twice
