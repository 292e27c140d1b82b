"""`difflab run`: a recipe replayed headless writes a complete run directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from difflab.diffusion.models import BasicUNet
from difflab.jobs.training import TrainingJob
from difflab.recipe import load_recipe
from difflab.runtime import events
from difflab.runtime.runs import RunDir
from difflab.runtime.worker import Worker
from tests.conftest import paused_from_the_start, read_losses, run_cli, tiny_args

REPO = Path(__file__).resolve().parents[1]


def test_a_short_run_writes_every_artifact(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args()) == 0
    # the resolved recipe: every default written out, and it replays as the same recipe
    recipe = load_recipe(run / "recipe.toml")
    assert recipe.dataset.image_size == 8 and "[sample]" in (run / "recipe.toml").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6, 8, 10, 12]
    assert set(metrics[0]) == {"step", "epoch", "loss", "lr", "img_per_s", "elapsed"}
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["denoising.gif", "final.png", "step_000004.png", "step_000008.png", "trajectory.png"]
    assert Image.open(run / "samples" / "denoising.gif").n_frames == 4  # one frame per sampling step
    assert Image.open(run / "samples" / "final.png").size[0] > 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000008", "step_000012"]
    assert sorted(p.name for p in (run / "checkpoints" / "step_000012").iterdir()) == [
        "model.safetensors", "optimizer.pt", "state.json", "state.safetensors"]
    model = BasicUNet.from_pretrained(run / "model")
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["epochs_completed"] == 3
    assert summary["final_loss"] == metrics[-1]["loss"] and len(summary["epoch_losses"]) == 3
    assert summary["versions"]["torch"]
    out = capsys.readouterr().out
    assert "epoch 2: average loss" in out and "finished" in out


def test_training_lowers_the_loss(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args("train.epochs=8", "train.lr=3e-3")) == 0
    epochs = json.loads((run / "summary.json").read_text())["epoch_losses"]
    assert epochs[-1] < 0.7 * epochs[0]


def test_the_same_recipe_and_seed_give_the_same_losses_bit_for_bit(tmp_path):
    for name in ("a", "b"):
        assert run_cli("run", "from-scratch", "--out", tmp_path / name, *tiny_args("dataset.flip=true")) == 0
    assert read_losses(tmp_path / "a") == read_losses(tmp_path / "b")
    other_seed = tmp_path / "c"
    assert run_cli("run", "from-scratch", "--out", other_seed, *tiny_args("dataset.flip=true", "seed=1")) == 0
    assert read_losses(other_seed) != read_losses(tmp_path / "a")


def stop_after(run: RunDir, recipe, steps: int) -> None:
    """Train exactly `steps` single steps on the worker, then stop as Ctrl-C or the stop key does."""
    worker = Worker("cpu")
    handle = paused_from_the_start(worker, TrainingJob(recipe, run))
    stream = worker.iter_events(handle.job_id)
    for step in range(1, steps + 1):
        handle.control.step_once()
        assert next(e for e in stream if isinstance(e, events.Progress)).step == step
    handle.control.stop()
    assert list(stream)[-1].status == "stopped"
    worker.shutdown()


def test_resume_ends_with_the_same_weights_and_losses_as_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    assert run_cli("run", "from-scratch", "--out", whole, *tiny_args("dataset.flip=true")) == 0
    parted = tmp_path / "parted"
    recipe = load_recipe(whole / "recipe.toml")
    run = RunDir.create(parted, recipe)
    stop_after(run, recipe, 5)  # mid-epoch, between logs, between checkpoints
    assert json.loads((parted / "summary.json").read_text())["steps"] == 5
    assert run_cli("run", "--resume", parted) == 0
    assert read_losses(parted) == read_losses(whole)
    final_a = load_file(whole / "checkpoints" / "step_000012" / "model.safetensors")
    final_b = load_file(parted / "checkpoints" / "step_000012" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    a, b = (json.loads((p / "summary.json").read_text()) for p in (whole, parted))
    assert a["epoch_losses"] == b["epoch_losses"] and b["status"] == "finished"


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "difflab", "run", "from-scratch", "--out", str(run),
            *tiny_args("train.epochs=60", "train.checkpoint_every=0", "train.sample_every=0")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    for line in proc.stdout:  # wait until training has logged a step
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and "--resume" in out
    assert [p.name for p in RunDir(run).list_checkpoints()] == [f"step_{summary['steps']:06d}"]
    resumed = subprocess.run([sys.executable, "-m", "difflab", "run", "--resume", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 240


# ------------------------------------------------------------------ bad input: exit 2, one line


def test_bad_recipe_value_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", out, "--set", "train.lr=-1") == 2
    err = capsys.readouterr().err
    assert "--set train.lr=-1: input should be greater than 0" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_folder_exits_2_and_leaves_no_run(tmp_path, recipe_file, capsys):
    recipe = recipe_file('[dataset]\nsource = "folder"\npath = "no-such-folder"\n')
    out = tmp_path / "run"
    assert run_cli("run", recipe, "--out", out) == 2
    assert "no-such-folder" in capsys.readouterr().err
    assert not out.exists()


def test_a_corrupt_image_is_named(tmp_path, recipe_file, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (12, 12), "red").save(images / "good.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    recipe = recipe_file('[dataset]\nsource = "folder"\npath = "images"\nimage_size = 8\nchannels = 3\n')
    assert run_cli("run", recipe, "--out", tmp_path / "run") == 2
    assert "broken.png" in capsys.readouterr().err


def test_an_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("run", "from-scratch", "--out", out) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-optimizer", "missing-state"])
def test_an_unreadable_checkpoint_on_resume_exits_2_naming_the_file(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert run_cli("run", "from-scratch", "--out", run, *tiny_args("train.epochs=1")) == 0
    latest = RunDir(run).list_checkpoints()[-1]
    target = {"truncate-weights": "model.safetensors", "garbage-optimizer": "optimizer.pt",
              "missing-state": "state.json"}[damage]
    path = latest / target
    if damage == "truncate-weights":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage-optimizer":
        path.write_bytes(b"not a pickle at all")
    else:
        path.unlink()
    capsys.readouterr()
    assert run_cli("run", "--resume", run) == 2
    err = capsys.readouterr().err
    assert target in err and "Traceback" not in err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert run_cli("run", "--resume", tmp_path / "nothing") == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_device_that_is_not_here_is_bad_input(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_cli("run", "from-scratch", "--out", tmp_path / "r", *tiny_args(), "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_out_of_memory_fails_with_a_suggestion(tmp_path, capsys, monkeypatch):
    from difflab.diffusion import objectives

    def exhausted(self, model, x, generator, labels=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(objectives.ToyObjective, "loss", exhausted)
    assert run_cli("run", "from-scratch", "--out", tmp_path / "run", *tiny_args()) == 1
    err = capsys.readouterr().err
    assert "out of memory on cpu at step 0" in err and "smaller train.batch_size (now 16)" in err
    assert "train.gradient_accumulation = 2" in err and "Traceback" not in err


def test_two_runs_started_in_the_same_second_get_different_folders(tmp_path, monkeypatch):
    from difflab.runtime.runs import default_run_dir

    monkeypatch.chdir(tmp_path)
    first = default_run_dir(Path("from-scratch.toml"))
    first.mkdir(parents=True)
    second = default_run_dir(Path("from-scratch.toml"))
    assert second != first and not second.exists() and second.name.startswith(first.name)


def test_log_lines_and_notes_print_square_brackets_verbatim():
    import io

    from rich.console import Console

    from difflab.cli.report import Reporter
    from difflab.runtime import events

    out = io.StringIO()
    Reporter(Console(file=out, width=200)).handle(
        events.LogLine(1, "skipped: torch-fidelity not installed (pip install 'difflab[fid]'); labels [3]"))
    assert "'difflab[fid]'); labels [3]" in out.getvalue()


def test_an_out_folder_that_cannot_be_made_is_bad_input_not_a_traceback(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert run_cli("run", "from-scratch", "--out", tmp_path / "a-file" / "run", *tiny_args()) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder (Not a directory)" in err and "Traceback" not in err
