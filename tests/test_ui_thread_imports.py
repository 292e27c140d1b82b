"""The UI thread never imports torch while you edit a recipe.

A fresh interpreter (a subprocess: torch must not be in it already) starts the lab under the
Pilot and edits every field of every screen, switching screens with the number keys. The fields
are found generically (every Input, Select and Switch on the screen, so a field added later is
covered): each Select is set to each of its options, each Switch flipped both ways, and each
Input given a valid alternative value, then a value of the wrong type (the field must show the
error, the recipe must keep its value and the lab must keep running), then its value again. It
does this first on the default (toy) recipe, with every value replaced in one edit, and then on a
DDPM recipe (unet2d, cosine β schedule), with the values typed key by key. On the DDPM recipe it
sets every sampler under every β schedule (Heun is refused under the cosine one, from a sigma_max
that the recipe check must compute without diffusers). On the sampling screen it chooses and
samples every sampler that a DDPM run and a toy run offer, and it presses the keys that start the
training, sweep and inversion jobs.

The jobs the screens submit are recorded and never run. If they ran, they would import torch on
the worker thread of the same process, which is where torch belongs. Each job must be a
difflab.jobs.launch.Launch or an object from a difflab module; since its module is imported in
the subprocess, the final check also proves that module is torch-free. At the end neither torch
nor diffusers may be in sys.modules. If one is, the test prints the stack of its first import.

Run by hand (the summary is printed as JSON): python -m tests.test_ui_thread_imports [FOLDER]
(FOLDER: where the lab runs, its runs/ included; by default a new temporary folder)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("torch", "diffusers")
# Job modules the UI side imports on purpose: their torch loads inside the job, on the worker.
TORCH_FREE_JOB_MODULES = ("difflab.jobs.devices",)
MODES = ["dataset", "schedule", "model", "training", "sampling", "audio", "inversion"]  # keys 1-7
SIZE = (120, 50)
# PACE. In the DDPM pass, values up to this long are typed key by key (each key is an edit that the
# app validates); longer ones (lists of block types) are replaced in one edit, like a paste: each key
# costs the lab ~30 ms of work on 2 cores. Keys are sent straight to the driver, not through
# Pilot.press, which waits for the process to idle (>= 40 ms a key). Each key is handled before the
# next is sent, by its field and by the same key's field on other screens. Sent in one burst, keys
# make the lab spin forever: RecipeField.refresh_value sets an Input's value, and the Changed that
# this posts, handled later, sets the recipe back to the value it had then. The training screen
# refreshes its fields while hidden, so typing "16" fast into train.batch_size on the model screen
# refreshes the training screen's field to "1" and then "16" before either Changed is handled, and
# from then on the recipe goes 1, 16, 1, 16... (the UI thread never idles again).
TYPED_CHARS = 12
# Frames at most 10 times a second instead of 60: each frame is still drawn, but edits that come
# faster than a person types share one, which halves the run time on 2 cores.
FPS = "10"

# The DDPM recipe of the second pass (the cosine schedule: the one Heun is refused on).
DDPM = {
    "dataset": {"source": "shapes", "num_images": 64, "image_size": 8, "channels": 3, "value_range": "-1..1"},
    "schedule": {"kind": "ddpm", "beta_schedule": "squaredcos_cap_v2"},
    "model": {"kind": "unet2d", "block_out_channels": [8, 16], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
              "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8},
    "train": {"objective": "epsilon", "batch_size": 16, "epochs": 1},
    "sample": {"sampler": "ddim", "steps": 4},
    "device": "cpu",
}
NOT_RUN = "not run: this test records the lab's jobs and never runs them"


def test_editing_every_field_of_every_screen_never_imports_torch_on_the_ui_thread(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DIFFLAB_IMAGES": "halfcell", "DIFFLAB_CACHE": str(tmp_path / "cache"), "TEXTUAL_FPS": FPS}
    command = [sys.executable, "-m", "tests.test_ui_thread_imports", str(tmp_path / "lab")]
    try:  # ~25 s on 2 busy cores
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100,
                                check=False)
    except subprocess.TimeoutExpired as timeout:
        stderr = (timeout.stderr or b"").decode(errors="replace")
        raise AssertionError(f"the scenario ran over {timeout.timeout} s:\n{stderr[-6000:]}") from None
    assert result.stdout.strip(), f"no summary (exit {result.returncode}):\n{result.stderr[-6000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    leaks = summary["imported"]
    assert not leaks, "torch/diffusers imported while editing the recipe:\n" + "\n\n".join(
        f"{name} (first as {leak['module']}, on thread {leak['thread']}), by:\n{leak['chain']}\n{leak['stack']}"
        for name, leak in leaks.items())
    assert summary["still_loaded"] == [], summary["still_loaded"]
    assert not summary["problems"], "\n".join(summary["problems"])
    assert result.returncode == 0, result.stderr[-6000:]
    # it found and edited the fields, so it cannot pass by finding nothing
    assert summary["modes"] == MODES * 2
    assert len(summary["recipe_keys"]) > 30, summary["recipe_keys"]
    assert summary["widgets_edited"] > 100, summary["widgets_edited"]
    assert summary["keys_typed"] > 300, summary["keys_typed"]
    assert len(summary["rejected"]) > 30, summary["rejected"]  # wrong types, each shown as the field's error
    tried = {(beta_schedule, sampler): message for beta_schedule, sampler, message in summary["samplers_tried"]}
    for beta_schedule in ("squaredcos_cap_v2", "linear"):
        for sampler in ("ddpm", "ddim", "heun", "euler", "dpm-solver++", "unipc"):
            assert (beta_schedule, sampler) in tried, tried
    # the refusal that needs the schedule's sigma_max was reached (and computed without diffusers)
    assert "heun" in tried["squaredcos_cap_v2", "heun"], tried
    assert set(summary["ui_samplers_sampled"]) >= {"ddim", "heun", "toy"}, summary["ui_samplers_sampled"]
    # the screens submitted jobs (probes, samples, a sweep, an inversion, a training run), none of them ran
    kinds = {job["class"] for job in summary["jobs"]}
    assert {"difflab.jobs.launch.Launch", "difflab.jobs.stepthrough.StepThroughJob"} <= kinds, kinds
    launched = {job["launches"] for job in summary["jobs"] if job["launches"]}
    assert {"training:TrainingJob", "inversion:FolderInversionJob", "probes:DatasetProbe",
            "schedule_probe:ScheduleProbe", "model_probe:ModelProbe", "probes:AudioProbe"} <= launched, launched
    assert any(name.startswith("sweep:") for name in launched), launched


# ---------------------------------------------------------------- the scenario, in the fresh interpreter

class _FirstImports:
    """A meta path finder that finds nothing: it notes the stack of the first import of each watched
    package (the diagnosis; the check itself is sys.modules at the end)."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, str]] = {}

    def find_spec(self, fullname: str, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in WATCHED and top not in self.seen:
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<frozen")]
            chain = [f"{_module_of(f.filename)}:{f.lineno} {f.line}" for f in frames
                     if "difflab" in f.filename or "/screens/" in f.filename]
            self.seen[top] = {"module": fullname, "thread": threading.current_thread().name,
                              "chain": "\n".join(chain), "stack": "".join(traceback.format_list(frames))}


def _module_of(filename: str) -> str:
    parts = Path(filename).with_suffix("").parts
    for anchor in ("difflab", "screens"):
        if anchor in parts:
            return ".".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
    return filename


def main(folder: str) -> int:
    fresh = [name for name in WATCHED if name in sys.modules]
    if fresh:
        print(json.dumps({"imported": {}, "still_loaded": fresh, "problems": ["not a fresh interpreter"]}))
        return 1
    watch = _FirstImports()
    sys.meta_path.insert(0, watch)
    lab = Path(folder)
    lab.mkdir(parents=True, exist_ok=True)
    os.chdir(lab)  # runs/ (the sampling source, training's run folder) is this test's own
    scenario = Scenario(lab)
    try:
        asyncio.run(scenario.run())
    except Exception:  # noqa: BLE001 (what failed goes into the summary, with the imports seen so far)
        scenario.problems.append("the scenario failed:\n" + traceback.format_exc())
    summary = scenario.summary()
    summary["imported"] = watch.seen
    summary["still_loaded"] = [name for name in WATCHED if name in sys.modules]
    print(json.dumps(summary, default=str))
    return 1 if watch.seen or summary["still_loaded"] or scenario.problems else 0


class Scenario:
    """Drives the lab; everything it finds wrong goes to `problems`."""

    def __init__(self, lab: Path) -> None:
        self.lab = lab
        self.problems: list[str] = []
        self.modes: list[str] = []
        self.recipe_keys: set[str] = set()
        self.widgets_edited = 0
        self.keys_typed = 0
        self.rejected: list[str] = []
        self.samplers_tried: list[tuple[str, str, str]] = []
        self.ui_samplers_sampled: list[str] = []
        self.jobs: list[dict[str, Any]] = []
        self._ids = itertools.count(1_000_000)
        self._twins: dict = {}
        self.typed_chars = 0

    def summary(self) -> dict[str, Any]:
        return {"problems": self.problems, "modes": self.modes, "recipe_keys": sorted(self.recipe_keys),
                "widgets_edited": self.widgets_edited, "keys_typed": self.keys_typed, "rejected": self.rejected,
                "samplers_tried": self.samplers_tried, "ui_samplers_sampled": self.ui_samplers_sampled,
                "jobs": [{k: v for k, v in job.items() if k in ("kind", "class", "launches", "thread")}
                         for job in self.jobs]}

    # ------------------------------------------------------------ the bridge: record, never run

    def record_jobs(self) -> None:
        from difflab.runtime.worker import JobControl, JobHandle
        from difflab.screens.bridge import EngineBridge

        def recorder(kind: str):
            def submit(bridge, job, on_event) -> JobHandle:
                handle = JobHandle(next(self._ids), JobControl())
                launches = getattr(job, "job", None) if type(job).__name__ == "Launch" else None
                self.jobs.append({"kind": kind, "class": f"{type(job).__module__}.{type(job).__qualname__}",
                                  "launches": launches, "thread": threading.current_thread().name,
                                  "job": job, "on_event": on_event, "id": handle.job_id, "answered": False})
                return handle
            return submit

        def forget(bridge, job_id: int) -> None:
            for job in self.jobs:
                if job["id"] == job_id:
                    job["answered"] = True

        EngineBridge.submit = recorder("device")
        EngineBridge.submit_probe = recorder("probe")
        EngineBridge.forget = forget

    def answer_jobs(self) -> None:
        """End each recorded job as the worker ends one that failed (the screen shows the error and is
        free again); a probe the screen forgot gets no answer, as from the bridge."""
        from difflab.runtime.events import JobError

        for job in self.jobs:
            if not job["answered"] and job["launches"] != "devices:DeviceProbe":
                job["answered"] = True
                job["on_event"](JobError(job_id=job["id"], message=NOT_RUN, exit_code=2))

    def check_jobs(self) -> None:
        """Launches name a job module that exists and was not imported here; other jobs are difflab's.
        Each job's own module is imported in this process: the final check (no torch in sys.modules)
        proves that importing it imported no torch."""
        import importlib.util

        from difflab.jobs.launch import Launch

        for job in self.jobs:
            if job["thread"] != "MainThread":
                self.problems.append(f"{job['class']} was submitted from thread {job['thread']}")
            if isinstance(job["job"], Launch):
                module = "difflab.jobs." + job["launches"].partition(":")[0]
                if importlib.util.find_spec(module) is None:
                    self.problems.append(f"a Launch of {job['launches']!r}: no module {module}")
                elif module in sys.modules and module not in TORCH_FREE_JOB_MODULES:
                    self.problems.append(f"a Launch of {job['launches']!r}: {module} was imported on the UI side")
            elif not type(job["job"]).__module__.startswith("difflab."):
                self.problems.append(f"{job['class']}: a job from outside difflab")

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        from difflab.recipe import Recipe, parse_recipe, save_recipe
        from difflab.screens.app import DifflabApp

        self.record_jobs()
        ddpm = parse_recipe(DDPM, "ddpm")
        for age, name, recipe in ((60, "toy-run", Recipe()), (0, "ddpm-run", ddpm)):  # sources; ddpm-run newest
            run = self.lab / "runs" / name
            run.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, run / "recipe.toml")
            os.utime(run, (time.time() - age, time.time() - age))
        save_recipe(ddpm, self.lab / "ddpm.toml")

        app = DifflabApp(device="cpu")
        async with app.run_test(size=SIZE) as pilot:
            self.app, self.pilot = app, pilot
            await self.every_sampler()
            await self.walk_every_screen(typed_chars=0)  # every value replaced in one edit
            app.open_recipe(self.lab / "ddpm.toml")
            await self.settle()
            if app.dirty:  # every field was edited: the lab asks before dropping the changes
                await pilot.press("d")  # discard
                await self.settle()
            if app.recipe.schedule.kind != "ddpm":
                self.problems.append("the DDPM recipe did not open")
            await self.walk_every_screen(typed_chars=TYPED_CHARS)
            await self.every_sampler("squaredcos_cap_v2", "linear", "scaled_linear", "sigmoid")
            self.answer_jobs()
            await self.settle()
            await self.switch_to("dataset")  # the lab still answers keys
            self.check_jobs()

    async def switch_to(self, mode: str) -> None:
        """Switch screens as a person does: with the screen's number key, from no focused field."""
        self.app.screen.set_focus(None)
        await self.send(str(MODES.index(mode) + 1))
        if not await self.until(lambda: self.app.current_mode == mode, f"key {MODES.index(mode) + 1} -> {mode}"):
            self.app.switch_mode(mode)
        await self.until(lambda: self.app.screen.is_mounted, f"{mode} mounted")
        await self.settle()

    async def walk_every_screen(self, typed_chars: int) -> None:
        from textual.widgets import Input, Select, Switch

        self.typed_chars = typed_chars

        for mode in MODES:
            await self.switch_to(mode)
            self.modes.append(mode)
            screen = self.app.screen
            widgets = list(screen.query("Input, Select, Switch"))
            if not widgets:
                self.problems.append(f"{mode}: no fields found")
            for widget in widgets:
                if not widget.is_attached:  # a Select's options may have been replaced meanwhile
                    continue
                self.widgets_edited += 1
                if isinstance(widget, Select):
                    await self.every_option(widget)
                elif isinstance(widget, Switch):
                    await self.flip(widget)
                elif isinstance(widget, Input):
                    await self.edit_input(widget)
                self.answer_jobs()
            await self.start_the_screens_job(mode)

    # ------------------------------------------------------------ one widget

    def owner(self, widget):
        """The RecipeField `widget` edits, or None for a screen setting outside the recipe."""
        from difflab.screens.widgets import RecipeField

        node = widget.parent
        while node is not None and node is not self.app.screen:
            if isinstance(node, RecipeField):
                self.recipe_keys.add(node.key)
                return node
            node = node.parent
        return None

    def name(self, widget) -> str:
        field = self.owner(widget)
        return f"{self.app.current_mode}:{field.key if field else widget.id}"

    async def settle(self) -> None:
        """Until the messages the screen's widgets have waiting now are handled (no wait for idle)."""
        await self.pilot.pause(0)

    async def send(self, *keys: str) -> None:
        """Press `keys` as the terminal sends them, without waiting (see PACE): the caller waits for what they do."""
        from textual import events
        from textual.keys import _character_to_key

        for key in keys:
            character = key if len(key) == 1 else {"space": " "}.get(key)
            name = _character_to_key(key) if len(key) == 1 and not key.isalnum() else key
            self.app._driver.send_message(events.Key(name, character))
            self.keys_typed += 1

    def twins(self, widget) -> list:
        """The inputs of the other screens' fields for the same recipe key (train.batch_size is on two)."""
        from difflab.screens.widgets import RecipeField

        field = self.owner(widget)
        if field is None:
            return []
        if field not in self._twins:
            self._twins[field] = [twin.query_one("Input, Select, Switch") for stack in self.app._screen_stacks.values()
                                  for screen in stack for twin in screen.query(RecipeField)
                                  if twin.key == field.key and twin is not field]
        return [twin for twin in self._twins[field] if twin.is_attached]

    async def handled(self, *widgets) -> None:
        for widget in widgets:
            await self._handled(widget)

    async def _handled(self, widget) -> None:
        """Until the messages that `widget` and its ancestors (up to the screen) have waiting are handled,
        those they pass up included: e.g. an Input's Changed, handled by its RecipeField."""
        chain = [node for node in widget.ancestors_with_self if node is not self.app]
        done = asyncio.Event()

        def hop(index: int) -> None:
            if index == len(chain):
                done.set()
            else:
                chain[index].call_later(hop, index + 1)

        hop(0)
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            self.problems.append(f"{self.name(widget)}: its messages were not handled")

    async def until(self, condition, what: str, state=lambda: "", timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.problems.append(f"{self.app.current_mode}: {what} did not happen {state()}")
                return False
            await asyncio.sleep(0.002)
        return True

    async def focus(self, widget) -> bool:
        """Focus `widget` (a field hidden on this screen, e.g. the other model kind's, cannot be)."""
        if not all(node.display for node in widget.ancestors_with_self if node is not self.app):
            return False
        widget.focus()
        return await self.until(lambda: self.app.focused is widget, f"{self.name(widget)}: focus")

    async def every_option(self, select) -> None:
        """Choose each option, then the first value again: in the typed pass the first change with the
        keyboard (enter, arrows, enter), the others as the list sets them (the same Changed: opened,
        the list costs 0.3 s)."""
        from textual.widgets import Select

        original = select.value
        values = [value for _, value in select._options if value is not Select.NULL and value != original]
        for value in values + [original]:
            if not select.is_attached or value not in [v for _, v in select._options]:
                break
            if self.typed_chars and values and value == values[0] and await self.focus(select):
                options = [v for _, v in select._options]
                await self.send("enter")  # opens the list at the current value
                if await self.until(lambda: select.expanded, f"{self.name(select)} opening"):
                    step = options.index(value) - options.index(select.value)
                    await self.send(*(["down"] * step if step > 0 else ["up"] * -step), "enter")
                    await self.until(lambda value=value: select.value == value and not select.expanded,
                                     f"{self.name(select)} = {value} by the keys")
            if select.value != value:
                select.value = value
            await self.handled(select, *self.twins(select))
            field = self.owner(select)
            if field is not None and field.error:
                self.rejected.append(f"{self.name(select)} = {value}: {field.error}")

    async def flip(self, switch) -> None:
        field = self.owner(switch)
        for _ in range(2):
            before = switch.value
            if await self.focus(switch):
                await self.send("space")
                await self.until(lambda before=before: switch.value != before, f"{self.name(switch)} toggled by space")
            if switch.value == before:
                switch.toggle()
            await self.handled(switch, *self.twins(switch))
            if field is not None and not field.error and self.app.recipe_value(field.key) != switch.value:
                self.problems.append(f"{self.name(switch)}: the switch shows {switch.value}, the recipe "
                                     f"{self.app.recipe_value(field.key)}")

    async def type_into(self, input_, text: str) -> None:
        """Clear the input with the keys and type `text` key by key (each key an edit the app validates)."""
        if await self.focus(input_):
            await self.clear(input_)
            await self.type_keys(input_, text)
        if input_.value != text:
            input_.value = text
        await self.handled(input_, *self.twins(input_))

    async def clear(self, input_) -> None:
        """home, then ctrl+k: each acts after any printable key sent with it, so each is awaited."""
        if input_.value:
            await self.send("home")
            await self.until(lambda: input_.cursor_position == 0, f"{self.name(input_)}: home")
            await self.send("ctrl+k")
            await self.until(lambda: input_.value == "", f"{self.name(input_)}: ctrl+k")
            await self.handled(input_, *self.twins(input_))

    async def type_keys(self, input_, text: str) -> None:
        """Type `text` into the focused input at its cursor, one key at a time, each handled (the
        field's, and its twins' on other screens) before the next, as a person types (see PACE)."""
        for typed in itertools.accumulate(text, initial=input_.value):
            if typed == input_.value:
                continue
            await self.send(typed[-1])
            if not await self.until(lambda typed=typed: input_.value == typed, f"{self.name(input_)}: typing {text!r}",
                                    lambda: f"it shows {input_.value!r}"):
                return
            await self.handled(input_, *self.twins(input_))

    async def replace_text(self, input_, text: str) -> None:
        """Replace the input's whole text at once, one edit (as a paste over the selected text is)."""
        input_.value = text
        await self.handled(input_, *self.twins(input_))

    async def edit_input(self, input_) -> None:
        from difflab.screens.widgets import _as_text

        field = self.owner(input_)
        original = input_.value
        if field is None:  # a screen setting (a run folder, a seed): retyped, then nonsense, then back
            await (self.type_into if len(original) <= self.typed_chars else self.replace_text)(input_, original)
            await self.replace_text(input_, "oops")
            await self.replace_text(input_, original)
            await self.leave(input_)
            return
        key, before = field.key, self.app.recipe_value(field.key)
        for attempt, text in enumerate(_alternatives(before)):  # the first the recipe takes
            typed = attempt == 0 and len(text) <= self.typed_chars
            await (self.type_into if typed else self.replace_text)(input_, text)
            if not field.error:
                break
        else:
            self.problems.append(f"{self.name(input_)}: no valid alternative to {before!r} was accepted "
                                 f"(last: {field.error})")
        # A value of the wrong type: text for a number or a list, a list for text. "'oops'" is typed (each
        # of its beginnings is just as wrong); "[1, 2]" begins with text, which a text field takes.
        wrong = "[1, 2]" if isinstance(before, str) else "'oops'"
        if isinstance(before, str) or len(wrong) > self.typed_chars or not await self.focus(input_):
            changed = self.app.recipe_value(key)
            await self.replace_text(input_, wrong)
        else:
            await self.clear(input_)
            changed = self.app.recipe_value(key)
            await self.type_keys(input_, wrong)
        label = field.query_one(".field-error")
        if not field.error or not label.display:
            self.problems.append(f"{self.name(input_)} = {wrong}: no error shown")
        else:
            self.rejected.append(f"{self.name(input_)} = {wrong}: {field.error}")
        if self.app.recipe_value(key) != changed:
            self.problems.append(f"{self.name(input_)} = {wrong}: the recipe took it")
        await self.replace_text(input_, _as_text(before))
        if field.error:
            self.problems.append(f"{self.name(input_)}: {_as_text(before)} refused after the edits: {field.error}")
        await self.leave(input_)

    async def leave(self, widget) -> None:
        if self.app.focused is widget:
            await self.send("tab")
            await self.until(lambda: self.app.focused is not widget, f"{self.name(widget)}: tab")

    # ------------------------------------------------------------ jobs and samplers

    async def start_the_screens_job(self, mode: str) -> None:
        """The keys that start a screen's job: training's start, sampling's sample and sweep, inversion's invert."""
        from textual.widgets import Input, Select

        from difflab.recipe import DIFFUSERS_SAMPLERS

        keys = {"training": ["ctrl+r"], "sampling": ["ctrl+e"], "inversion": ["ctrl+r"]}.get(mode, [])
        if mode == "sampling":  # a DDPM run and a toy run as the source: each sampler it offers, sampled
            source = self.app.screen.query_one("#source", Input)
            original = source.value
            for run, offered in (("runs/ddpm-run", DIFFUSERS_SAMPLERS), ("runs/toy-run", ("toy",))):
                await self.replace_text(source, run)
                sampler = self.app.screen.query_one("#sampler", Select)
                options = tuple(v for _, v in sampler._options)
                if options != offered:
                    self.problems.append(f"sampling: {run} offers the samplers {options}, not {offered}")
                for value in options:
                    await self.choose(sampler, value)
                    await self.press_from_no_field("ctrl+r")
                    self.answer_jobs()
                    self.ui_samplers_sampled.append(value)
            await self.replace_text(source, original)
        for key in keys:
            await self.press_from_no_field(key)
            self.answer_jobs()
            await self.settle()

    async def press_from_no_field(self, key: str) -> None:
        count = len(self.jobs)
        self.app.screen.set_focus(None)
        await self.send(key)
        await self.until(lambda: any(job["kind"] == "device" for job in self.jobs[count:]),
                         f"{key} submitting a job")

    async def every_sampler(self, *beta_schedules: str) -> None:
        """Every sampler on the recipe, set as a field sets a value (no screen has a field for
        sample.sampler: the sampling screen's sampler list is its own): on the toy recipe (no β
        schedules), or on the DDPM one under each of `beta_schedules`, chosen on the schedule screen."""
        from difflab.recipe import SAMPLERS

        app = self.app
        if beta_schedules:
            await self.switch_to("schedule")
        for beta_schedule in beta_schedules or ["toy"]:
            if beta_schedules:
                app.set_recipe_value("sample.sampler", "ddim")  # one every beta schedule takes
                field = app.screen.query_one("#field-schedule-beta_schedule")
                await self.choose(field.query_one("Select"), beta_schedule)
                if app.recipe.schedule.beta_schedule != beta_schedule:
                    self.problems.append(f"beta_schedule {beta_schedule} refused: {field.error}")
            for sampler in SAMPLERS:
                message = app.set_recipe_value("sample.sampler", sampler)
                self.samplers_tried.append((beta_schedule, sampler, message))
            await self.settle()

    async def choose(self, select, value: str) -> None:
        select.value = value
        await self.handled(select, *self.twins(select))


def _alternatives(value: Any) -> list[str]:
    """Texts to type for a value other than `value` that the recipe might take, most likely first."""
    from difflab.screens.widgets import _as_text

    if isinstance(value, int):
        return [str(n) for n in (value + 1, value * 2, value - 1, 1, 2, value)]
    if isinstance(value, float):
        return [repr(x) for x in (value / 2 if value else 0.5, value * 2, value + 0.5, 0.5, value)]
    if isinstance(value, list):
        shorter = [_as_text(value[:-1])] if len(value) > 1 else []
        return [*shorter, _as_text(value + value[-1:]), _as_text(value)] if value else \
            ["[10, 20]", "[1.5, 3.0]", "['a.png']", "[]"]
    return [f"{value}x" if value else "elsewhere", _as_text(value)]


if __name__ == "__main__":
    import tempfile

    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ui-thread-imports-")))
