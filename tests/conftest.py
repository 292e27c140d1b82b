"""Shared helpers: tiny recipes that run real code paths in a second or two."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from difflab.cli.main import main


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker process its share of the cores for torch's threads.

    Two workers with two torch threads each on a 2-core box stall every parallel region on a
    descheduled thread; the variable also reaches the tests' own `difflab` subprocesses.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()  # before anything imports torch, which reads it once

# A few seconds on 2 cores: 64 digits at 8 px, a 3-level BasicUNet of 8/16/16 channels.
TINY = [
    "dataset.limit=64", "dataset.image_size=8", "model.channels=[8, 16, 16]", "model.kernel_size=3",
    "train.batch_size=16", "train.epochs=3", "train.log_every=2", "train.sample_every=4",
    "train.checkpoint_every=4", "train.keep_checkpoints=2", "train.preview_images=4",
    "sample.steps=4", "sample.num_images=4", "sample.trajectory_steps=3", "sample.trajectory_images=2",
    "eval.enabled=false", "expect.enabled=false", "device='cpu'",
]

# The DDPM chapter at the same scale: a 2-level UNet2DModel of 8/16 channels on 8 px RGB shapes.
TINY_DDPM = [
    "dataset.source=shapes", "dataset.num_images=64", "dataset.image_size=8", "dataset.channels=3",
    "dataset.value_range='-1..1'", "schedule.kind=ddpm", "schedule.beta_schedule=squaredcos_cap_v2",
    "model.kind=unet2d", "model.block_out_channels=[8, 16]", "model.layers_per_block=1",
    "model.down_block_types=['DownBlock2D', 'AttnDownBlock2D']",
    "model.up_block_types=['AttnUpBlock2D', 'UpBlock2D']", "model.norm_num_groups=8",
    "train.objective=epsilon", "train.optimizer=adamw", "train.batch_size=16", "train.epochs=3",
    "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4", "train.preview_images=4",
    "sample.sampler=ddim", "sample.steps=4", "sample.num_images=4", "sample.trajectory_steps=3",
    "sample.trajectory_images=2", "eval.enabled=false", "expect.enabled=false", "device='cpu'",
]


def tiny_args(*extra: str, base: list[str] = TINY) -> list[str]:
    """`--set` arguments for the tiny recipe (or another base), plus any extra overrides."""
    args = []
    for item in [*base, *extra]:
        args += ["--set", item]
    return args


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def read_losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True, scope="session")
def classifier_cache(tmp_path_factory):
    """Reference classifiers go to a folder of this test session, never to the user's cache."""
    import os

    # One folder for every xdist worker of this run: a classifier trained by one is read by the
    # others (reference.py makes a second process wait for the first rather than train it again).
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    folder = (tmp_path_factory.getbasetemp().parent / "difflab-cache" if shared
              else tmp_path_factory.mktemp("difflab-cache"))
    folder.mkdir(exist_ok=True)
    previous = os.environ.get("DIFFLAB_CACHE")
    os.environ["DIFFLAB_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DIFFLAB_CACHE", None)
    else:
        os.environ["DIFFLAB_CACHE"] = previous


def smoke_run(folder: Path, recipe: str) -> Path:
    """A built-in recipe's smoke replay into `folder`/run (its expectations must pass)."""
    run = folder / "run"
    assert run_cli("run", recipe, "--profile", "smoke", "--out", run, "--device", "cpu") == 0
    return run


# Expensive runs that several tests read, made once per test session. Tests that use one carry
# its xdist_group mark, so that under pytest-xdist they share one worker and one replay.
@pytest.fixture(scope="session")
def conditional_smoke_run(tmp_path_factory) -> Path:
    """class-conditional-digits' smoke run: the fine-tunes' starting weights."""
    return smoke_run(tmp_path_factory.mktemp("conditional"), "class-conditional-digits")


@pytest.fixture(scope="session")
def inversion_smoke_run(tmp_path_factory) -> Path:
    """ddim-inversion's smoke run: a class-conditional 8 px digits DDPM, trained ~320 steps."""
    return smoke_run(tmp_path_factory.mktemp("inversion"), "ddim-inversion")


@pytest.fixture
def recipe_file(tmp_path: Path):
    """Write a recipe file with the given TOML text and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


class BlockingJob:
    """Holds the worker until released, so a test can set up the next job's control first."""

    name = "block"
    device = "cpu"

    def __init__(self):
        self.release = threading.Event()

    def run(self, ctx):
        self.release.wait()
        return "finished", {}


def paused_from_the_start(worker, job):
    """Submit `job` so that it is paused before it takes its first step."""
    blocker = BlockingJob()
    worker.submit(blocker)
    handle = worker.submit(job)
    handle.control.pause()
    blocker.release.set()
    return handle


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def wait_for_probe(pilot, timeout: float = 90.0) -> None:
    """Let the current screen's probe job finish on the worker and its images be turned into
    terminal cells on their threads (polls; never a blind sleep)."""
    import time

    deadline = time.monotonic() + timeout
    await pilot.pause(0.05)
    while getattr(pilot.app.screen, "probing", False):
        assert time.monotonic() < deadline, "the screen's probe did not finish"
        await pilot.pause(0.1)
    await wait_for_images(pilot, deadline)


async def wait_for_images(pilot, deadline: float) -> None:
    """Until every terminal image on the screen shows the cells of its current picture."""
    import time

    from difflab.screens.widgets import HalfcellPreview

    await pilot.pause(0.05)
    while any(image.rendering for image in pilot.app.screen.query(HalfcellPreview)):
        assert time.monotonic() < deadline, "a terminal image was not rendered"
        await pilot.pause(0.05)
    await pilot.pause(0.05)
