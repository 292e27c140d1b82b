"""The difflab app: the screen switcher, the recipe being edited, and the bridge to the worker.

The app holds one Recipe. Screens edit it through `set_recipe_value`, which
validates with the same schema (and the same messages) as the headless runner.
Work goes to the engine's worker through the bridge; nothing here imports torch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.reactive import reactive

from difflab.errors import DifflabError, RecipeError
from difflab.jobs import launch
from difflab.recipe import Recipe, load_recipe, parse_recipe, save_recipe
from difflab.runtime.catalog import is_builtin

from .audio import AudioScreen
from .bridge import DRAIN_HZ, EngineBridge
from .dataset import DatasetScreen
from .dialogs import (
    MIN_HEIGHT,
    MIN_WIDTH,
    ConfirmQuitScreen,
    HelpScreen,
    OpenRecipeScreen,
    RecipeBrowserScreen,
    SaveAsScreen,
    TooSmallScreen,
    UnsavedChangesScreen,
)
from .inversion import InversionScreen
from .model import ModelScreen
from .sampling import SamplingScreen
from .schedule import ScheduleScreen
from .training import TrainingScreen
from .widgets import SCREENS

# The engine's messages name the CLI command that fixes a problem; where the lab has a key
# for the same fix, the message names it too.
LAB_KEYS = {"difflab run --resume": "`c` on the training screen (4)"}


class DifflabCommands(Provider):
    """difflab's own commands in the command palette."""

    async def search(self, query: str) -> Hits:
        app = self.app
        commands = [
            ("Open recipe…", app.action_open_recipe, "open a recipe file"),
            ("Save recipe", app.action_save_recipe, "save to the current file"),
            ("Save recipe as…", app.action_save_recipe_as, "save under a new name"),
            ("Built-in recipes…", app.action_browse_recipes, "start from a course experiment"),
            ("Help", app.action_help, "what each screen teaches"),
        ] + [(f"Go to {label[2:]} screen", partial(app.switch_mode, name), "") for name, label in SCREENS]
        matcher = self.matcher(query)
        for name, callback, help_text in commands:
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)




class DifflabApp(App):
    """A terminal lab for diffusion models."""

    TITLE = "difflab"
    CSS_PATH = "app.tcss"
    MODES = {"dataset": DatasetScreen, "schedule": ScheduleScreen, "model": ModelScreen,
             "training": TrainingScreen, "sampling": SamplingScreen, "audio": AudioScreen,
             "inversion": InversionScreen}
    DEFAULT_MODE = "dataset"
    COMMANDS = App.COMMANDS | {DifflabCommands}
    # The screen keys live in the tab bar (ScreenBar), so the footer keeps its room for each
    # screen's own keys, help and the recipe keys.
    BINDINGS = [
        Binding("1", "switch_mode('dataset')", "Dataset", id="screen.dataset", show=False,
                tooltip="the data screen"),
        Binding("2", "switch_mode('schedule')", "Schedule", id="screen.schedule", show=False,
                tooltip="noise schedules"),
        Binding("3", "switch_mode('model')", "Model", id="screen.model", show=False, tooltip="the network"),
        Binding("4", "switch_mode('training')", "Train", id="screen.training", show=False,
                tooltip="train and watch it learn"),
        Binding("5", "switch_mode('sampling')", "Sample", id="screen.sampling", show=False,
                tooltip="sample step by step"),
        Binding("6", "switch_mode('audio')", "Audio", id="screen.audio", show=False,
                tooltip="sound as spectrogram images"),
        Binding("7", "switch_mode('inversion')", "Invert", id="screen.inversion", show=False,
                tooltip="images back to their noise, reconstructions, edits"),
        Binding("question_mark", "help", "Help", id="help", tooltip="what each screen teaches"),
        Binding("escape", "leave_field", "Leave field", id="focus.leave", show=False,
                tooltip="stop editing the field: keys go to the screen again"),
        Binding("ctrl+o", "open_recipe", "Open", id="recipe.open", tooltip="open a recipe file"),
        Binding("ctrl+s", "save_recipe", "Save", id="recipe.save", tooltip="save the recipe"),
        Binding("ctrl+b", "browse_recipes", "Built-ins", id="recipe.builtins", tooltip="built-in recipes"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    recipe: reactive[Recipe] = reactive(Recipe, init=False)
    """The recipe being edited; every screen reads and edits this one."""
    recipe_path: reactive[Path | None] = reactive(None)
    """The file the recipe came from or was last saved to."""
    dirty: reactive[bool] = reactive(False)
    """Whether the recipe has changes not saved to `recipe_path`."""
    device_label: reactive[str] = reactive("…")
    """The worker's device, by name, once the worker has looked."""
    recipes_opened: reactive[int] = reactive(0)
    """How many recipes were opened; a new one shows in every field, the one being edited too."""

    def __init__(self, recipe_path: Path | None = None, device: str = "auto") -> None:
        super().__init__()
        self.bridge = EngineBridge(device)
        self.set_reactive(DifflabApp.recipe, load_recipe(recipe_path) if recipe_path else Recipe())
        self.recipe_path = recipe_path

    def on_mount(self) -> None:
        # 16 colours, e.g. TERM=screen (headless, as in tests, reports 16 too but draws truecolor)
        if not self.is_headless and self.console.color_system in ("standard", "windows"):
            self.add_class("-few-colours")  # app.tcss: field borders the theme's greys would hide
        self.set_interval(1 / DRAIN_HZ, self.bridge.drain)
        # The worker's first job imports torch, which holds the GIL for a second or so:
        # start it once the first frame is on screen, not before.
        self.call_after_refresh(self._ask_device)

    def on_unmount(self) -> None:
        # A job left running would die inside torch at interpreter exit: stop it (training
        # checkpoints first) and let the worker finish before the process goes.
        self.bridge.close()

    def _ask_device(self) -> None:
        self.bridge.submit(launch.probe("devices:DeviceProbe"), self._on_device)

    def _on_device(self, event) -> None:
        summary = getattr(event, "summary", None)
        if summary:
            self.device_label = summary["label"]

    # ------------------------------------------------------------ the recipe

    @property
    def recipe_dir(self) -> Path | None:
        return self.recipe_path.parent if self.recipe_path else None

    def recipe_value(self, key: str) -> Any:
        node: Any = self.recipe
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def set_recipe_value(self, key: str, value: Any) -> str:
        """Change one key; returns "" or the validation message the headless runner would print."""
        data = self.recipe.model_dump(mode="json")
        source = str(self.recipe_path or "recipe")
        try:
            _assign(data, key, value)
            recipe = parse_recipe(data, source)
        except RecipeError as error:
            return "\n".join(error.problems)
        if recipe != self.recipe:
            self.recipe = recipe
            self.dirty = True
        return ""

    def open_recipe(self, path: Path) -> None:
        """Edit the recipe in `path` instead; with unsaved changes, ask first (save, discard, cancel)."""
        try:
            recipe = load_recipe(path)
        except DifflabError as error:
            self.notify(str(error), title="cannot open recipe", severity="error", timeout=10)
            return
        if not self.dirty:
            self._take(recipe, path)
            return

        def answered(choice: str | None) -> None:
            if choice == "discard":
                self._take(recipe, path)
            elif choice == "save":
                self._save_then(lambda: self._take(recipe, path))

        current = self.recipe_path.name if self.recipe_path else "This recipe"
        self.push_screen(UnsavedChangesScreen(current, path.name), answered)

    def _take(self, recipe: Recipe, path: Path) -> None:
        self.recipes_opened += 1  # before the recipe: its watchers refresh every field, the focused one too
        self.recipe, self.recipe_path, self.dirty = recipe, path, False
        self.notify(f"opened {path}")

    def _save_then(self, then) -> None:
        """Save the recipe (asking for a name where ctrl+s would), then call `then` if it was saved."""
        if self.recipe_path is not None and not is_builtin(self.recipe_path):
            if self.save_to(self.recipe_path):
                then()
            return
        suggestion = self.recipe_path.name if self.recipe_path else "recipe.toml"
        self.push_screen(SaveAsScreen(suggestion), lambda path: path and self.save_to(path) and then())

    def save_to(self, path: Path) -> bool:
        """Write the recipe to `path`; False (and a notification) if it could not be written."""
        try:
            save_recipe(self.recipe, path)
        except OSError as error:
            self.notify(f"{path}: {error.strerror or error}", title="cannot save", severity="error", timeout=10)
            return False
        self.recipe_path, self.dirty = path, False
        self.notify(f"saved {path}")
        return True

    def notify(self, message: str, *, markup: bool = True, **kwargs) -> None:
        """Every notification as plain text, whoever sends it (screens pass markup=True by default).

        Messages carry paths, tensor shapes and recipe sections ("make [model] match"), which
        Textual would read as markup tags and drop; the lab's own messages use no markup.
        A CLI fix the lab has a key for is named with its key (LAB_KEYS).
        """
        for command, key in LAB_KEYS.items():
            if command in message and key not in message:
                message += f" (in the lab: {key})"
        super().notify(message, markup=False, **kwargs)

    # ------------------------------------------------------------ the terminal's size

    def on_resize(self, event: events.Resize) -> None:
        """Below 80×24 show the notice instead of a cut layout; take it away once the terminal grows."""
        small = event.size.width < MIN_WIDTH or event.size.height < MIN_HEIGHT
        showing = isinstance(self.screen, TooSmallScreen)
        if small and not showing:
            self.push_screen(TooSmallScreen())
        elif not small and showing:
            self.pop_screen()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Behind the too-small notice only quitting works (a key must not change what is hidden)."""
        return action == "quit" or not isinstance(self.screen, TooSmallScreen)

    # ------------------------------------------------------------ actions

    async def action_quit(self) -> None:
        """Quit; while training, ask first, and stop the job with a checkpoint before leaving."""
        training = self.training_screen
        if training is None or not training.running:
            self.exit()
            return

        def answered(stop: bool | None) -> None:
            if stop:
                training.stop()
                self.notify("stopping: writing a checkpoint before quitting…")
                self._quit_timer = self.set_interval(0.1, self._exit_when_stopped)

        self.push_screen(ConfirmQuitScreen(), answered)

    def _exit_when_stopped(self) -> None:
        self.bridge.drain()
        if not self.training_screen.running:
            self.exit()

    @property
    def training_screen(self):
        """The training screen if it was ever opened (it owns the running training job)."""
        return getattr(self, "_training_screen", None)

    def register_training_screen(self, screen) -> None:
        self._training_screen = screen

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_leave_field(self) -> None:
        """Escape: nothing focused, so the screen's keys (1–7, p, x, …) work again."""
        self.screen.set_focus(None)

    def action_open_recipe(self) -> None:
        # the folder the person works in: a built-in's folder is inside the installed package
        folder = self.recipe_dir if self.recipe_path and not is_builtin(self.recipe_path) else Path.cwd()
        self.push_screen(OpenRecipeScreen(folder), lambda path: path and self.open_recipe(path))

    def action_save_recipe(self) -> None:
        if self.recipe_path is None or is_builtin(self.recipe_path):
            self.action_save_recipe_as()
        else:
            self.save_to(self.recipe_path)

    def action_save_recipe_as(self) -> None:
        suggestion = self.recipe_path.name if self.recipe_path else "recipe.toml"
        self.push_screen(SaveAsScreen(suggestion), lambda path: path and self.save_to(path))

    def action_browse_recipes(self) -> None:
        self.push_screen(RecipeBrowserScreen(), lambda path: path and self.open_recipe(path))


def _assign(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value
