"""Modal screens: help, open a recipe, save as, the built-in recipe browser, unsaved changes;
and the notice shown instead of the lab while the terminal is too small."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DirectoryTree, Input, Label, Markdown, OptionList
from textual.widgets.option_list import Option

from difflab.runtime.catalog import builtin_recipes

MIN_WIDTH, MIN_HEIGHT = 80, 24  # every screen is laid out to show everything from this size up

HELP = """\
# difflab

A lab for the diffusion-models course, one screen per step. Every screen edits one
section of the **recipe** (a TOML file); `difflab run RECIPE` replays it headless.

**Keys and focus.** `Tab` / `shift+Tab` go through the fields and panes; a field being edited
takes every key typed, and `Escape` leaves it. With no field being edited, `1`–`7`, the
screen's own keys (`p` `x` `c` `n` …) and `PageDown` / `PageUp` (the right-hand pane) work.

| key | screen | teaches | edits |
|---|---|---|---|
| `1` | Dataset | what the model learns from: source, size, channels, value range, classes | `[dataset]` |
| `2` | Schedule | how images are corrupted: the toy linear mix vs DDPM's √ᾱ / √(1−ᾱ) schedule, SNR | `[schedule]` |
| `3` | Model | BasicUNet vs UNet2DModel: parameters, block shapes, FLOPs, step time | `[model]` |
| `4` | Training | start / pause (`p`) / single step (`n`) / stop (`x`) / continue (`c`) a run; live loss (log: `l`), lr, img/s, ETA, memory, previews, loss by noise level, checkpoints | `[train]` |
| `5` | Sampling | any run, checkpoint or pipeline with any sampler; step through x_t and the predicted x0 (`←` `→`), two samplers side by side, save PNG + GIF (`ctrl+g`); class, CFG and loss guidance; sweeps (`ctrl+e`) | `[sample]` |
| `6` | Audio | a clip's waveform and mel spectrogram, what the mel settings lose on the way back to sound, a run's generated clips | `[audio]` |
| `7` | Inversion | DDIM run backwards: a run's images, the noise that makes them, the reconstruction and an edit (another class, CFG scale or loss guidance from a start step); the error table (MSE, PSNR, random noise for scale, step and guidance sweeps) | `[invert]` |

`ctrl+r` starts the training, sampling or inversion job of the screen you are on.

| key | does |
|---|---|
| `ctrl+o` / `ctrl+s` | open / save the recipe (save as: command palette); unsaved changes are asked about first |
| `ctrl+b` | built-in recipes |
| `ctrl+p` | command palette |
| `?` | this help |
| `ctrl+q` | quit |

An invalid value shows the same message as `difflab recipe check`, under its field; the
recipe keeps its last valid value.
"""


class HelpScreen(ModalScreen[None]):
    """What each screen teaches and which recipe section it edits."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="help.close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90; max-width: 100%; height: 80%; border: thick $primary; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)


class OpenRecipeScreen(ModalScreen[Path | None]):
    """Pick a recipe file from a folder tree, or type its path."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="open.cancel")]
    DEFAULT_CSS = """
    OpenRecipeScreen { align: center middle; }
    OpenRecipeScreen > Vertical { width: 80; max-width: 100%; height: 80%; border: thick $primary; background: $surface; }
    OpenRecipeScreen DirectoryTree { height: 1fr; }
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a recipe (.toml): pick one or type a path and press enter")
            yield Input(placeholder="path/to/recipe.toml", id="path")
            yield RecipeTree(self.folder)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(Path(event.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(Path(event.value).expanduser() if event.value.strip() else None)


class RecipeTree(DirectoryTree):
    """A folder tree of what can be a recipe: folders and .toml files, no hidden or Python files."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [path for path in paths if not path.name.startswith((".", "__"))
                and (path.suffix == ".toml" or path.is_dir())]


class SaveAsScreen(ModalScreen[Path | None]):
    """Ask for the file to save the recipe to."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="save.cancel")]
    DEFAULT_CSS = """
    SaveAsScreen { align: center middle; }
    SaveAsScreen > Vertical { width: 70; max-width: 100%; height: auto; border: thick $primary; background: $surface; padding: 1; }
    """

    def __init__(self, suggestion: str) -> None:
        super().__init__()
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Save the recipe as (TOML, the same form `difflab run` reads):")
            yield Input(self.suggestion, id="path")
            yield Button("Save", variant="primary", id="save")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._finish()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._finish()

    def _finish(self) -> None:
        value = self.query_one(Input).value.strip()
        self.dismiss(Path(value).expanduser() if value else None)


class RecipeBrowserScreen(ModalScreen[Path | None]):
    """The built-in recipes, one line each; enter opens one."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="browse.cancel")]
    DEFAULT_CSS = """
    RecipeBrowserScreen { align: center middle; }
    RecipeBrowserScreen > Vertical { width: 100; max-width: 100%; height: auto; max-height: 80%; border: thick $primary;
                                     background: $surface; }
    """

    def compose(self) -> ComposeResult:
        self.recipes = builtin_recipes()
        with Vertical():
            yield Label("Built-in recipes: one per course experiment")
            yield OptionList(*[Option(f"[b]{r.name}[/b]  {r.description}", id=r.name) for r in self.recipes])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(next(r.path for r in self.recipes if r.name == event.option.id))


class ConfirmQuitScreen(ModalScreen[bool]):
    """Quitting while training: stop the job (it writes a checkpoint) and quit, or stay."""

    BINDINGS = [Binding("y", "dismiss(True)", "Stop and quit", id="quit.yes"),
                Binding("n,escape", "dismiss(False)", "Keep training", id="quit.no")]
    DEFAULT_CSS = """
    ConfirmQuitScreen { align: center middle; }
    ConfirmQuitScreen > Vertical { width: 64; max-width: 100%; height: auto; border: thick $warning; background: $surface;
                                   padding: 1 2; }
    ConfirmQuitScreen Label { width: 100%; }
    ConfirmQuitScreen Horizontal { height: auto; }
    ConfirmQuitScreen Button { margin: 1 1 0 0; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("A training job is running. Stop it (a checkpoint is written first, "
                        "so `c` on the training screen (4) or `difflab run --resume` can continue it) and quit?")
            with Horizontal():
                yield Button("Stop and quit (y)", variant="warning", id="yes")
                yield Button("Keep training (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class RunFolderScreen(ModalScreen[Path | None]):
    """Pick a run folder (one with recipe.toml and checkpoints/) from a tree, or type its path."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="run-folder.cancel")]
    DEFAULT_CSS = """
    RunFolderScreen { align: center middle; }
    RunFolderScreen > Vertical { width: 80; max-width: 100%; height: 24; max-height: 100%; border: thick $primary; background: $surface; }
    RunFolderScreen DirectoryTree { height: 1fr; }
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder if folder.is_dir() else Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Continue which run? Pick its folder, or type its path and press enter.")
            yield Input(placeholder="runs/from-scratch-20261122-101500", id="run-path")
            yield DirectoryTree(self.folder)

    def on_directory_tree_directory_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        if (event.path / "recipe.toml").is_file():  # a run folder, not a folder of runs
            self.dismiss(event.path)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(Path(event.value.strip()).expanduser())



class UnsavedChangesScreen(ModalScreen[str]):
    """Another recipe is about to replace one with unsaved changes: "save", "discard" or "cancel"."""

    BINDINGS = [Binding("s", "dismiss('save')", "Save", id="unsaved.save"),
                Binding("d", "dismiss('discard')", "Discard", id="unsaved.discard"),
                Binding("escape,c", "dismiss('cancel')", "Cancel", id="unsaved.cancel")]
    DEFAULT_CSS = """
    UnsavedChangesScreen { align: center middle; }
    UnsavedChangesScreen > Vertical { width: 70; max-width: 100%; height: auto; border: thick $warning;
                                      background: $surface; padding: 1 2; }
    UnsavedChangesScreen Label { width: 100%; }
    UnsavedChangesScreen Horizontal { height: auto; }
    UnsavedChangesScreen Button { margin: 1 1 0 0; }
    """

    def __init__(self, current: str, replacement: str) -> None:
        super().__init__()
        self.current, self.replacement = current, replacement

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"{self.current} has unsaved changes. Save them before opening {self.replacement}?",
                        markup=False)
            with Horizontal():
                yield Button("Save (s)", variant="primary", id="save")
                yield Button("Discard (d)", variant="error", id="discard")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class TooSmallScreen(Screen[None]):
    """Shown instead of the lab while the terminal is smaller than 80×24; the app removes it when it grows."""

    DEFAULT_CSS = """
    TooSmallScreen { align: center middle; }
    TooSmallScreen Label { width: 100%; text-align: center; }
    """

    def compose(self) -> ComposeResult:
        yield Label(id="too-small")

    def on_mount(self) -> None:
        self.on_resize()

    def on_screen_resume(self) -> None:
        # a question asked meanwhile (quit while training) may have been on top when it grew
        if self.app.size.width >= MIN_WIDTH and self.app.size.height >= MIN_HEIGHT:
            self.app.pop_screen()

    def on_resize(self) -> None:
        self.query_one("#too-small", Label).update(
            f"make the terminal at least {MIN_WIDTH}×{MIN_HEIGHT}\n"
            f"(it is {self.app.size.width}×{self.app.size.height}; the lab comes back when it grows)")
