"""The training loop never waits on the host between log intervals, and a diverged run keeps no bad
checkpoint. On the CPU a TorchFunctionMode stands in for torch.cuda.set_sync_debug_mode: it counts
the calls that would copy a value to the host on a GPU (.item(), .tolist(), .cpu(), bool/int/float)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from difflab.jobs import training
from tests.conftest import TINY_DDPM, read_losses, run_cli, tiny_args

HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Counts tensor calls that hand a value to Python (each one a device sync on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and not _in_optimizer_step_count():
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _in_optimizer_step_count() -> bool:
    # torch.optim keeps each parameter's step count as a host tensor unless `capturable`/`fused`,
    # so its .item() for the bias correction never waits on a GPU: not a sync to count.
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/optim/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def count_host_reads(monkeypatch, method: str) -> list[list[str]]:
    """Wrap `_Training.<method>` so each call records the host reads made inside it."""
    per_call: list[list[str]] = []
    original = getattr(training._Training, method)

    def counted(self, *args, **kwargs):
        with HostReads() as reads:
            result = original(self, *args, **kwargs)
        per_call.append(reads.calls)
        return result

    monkeypatch.setattr(training._Training, method, counted)
    return per_call


@pytest.mark.parametrize("features", [
    [],
    ["train.ema=true", "train.max_grad_norm=1.0", "train.gradient_accumulation=2", "train.snr_gamma=5.0"],
    ["model.num_classes=4", "train.label_dropout=0.1", "dataset.flip=true"],
], ids=["plain", "ema-clip-accumulation-minsnr", "class-conditional-flip"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, features):
    steps = count_host_reads(monkeypatch, "train_step")
    logs = count_host_reads(monkeypatch, "log")
    out = tmp_path / "run"
    code = run_cli("run", "ddpm-rgb-32", *tiny_args("train.log_every=4", "train.sample_every=0", "train.checkpoint_every=0",
                                     *features, base=TINY_DDPM), "--out", out)
    assert code == 0
    assert len(steps) >= 6 and all(reads == [] for reads in steps), steps
    # Per log line: the divergence flag, the loss's mean and the noise-level buckets (sums and counts).
    assert len(logs) >= 2 and all(len(reads) <= 4 for reads in logs), logs


def test_a_loss_that_turns_nan_between_log_lines_stops_the_run_before_any_checkpoint_holds_it(tmp_path, monkeypatch):
    original = training._Training.train_step

    def poisoned(self, micro_batches):
        original(self, micro_batches)
        if self.state.step == 5:  # the 6th step's loss and all weights from then on are NaN
            with torch.no_grad():
                for p in self.unwrapped.parameters():
                    p.fill_(float("nan"))

    monkeypatch.setattr(training._Training, "train_step", poisoned)
    out = tmp_path / "run"
    # log_every=20 never logs before the end; a checkpoint every 2 steps is where NaN used to be saved
    code = run_cli("run", "ddpm-rgb-32", *tiny_args("train.log_every=20", "train.checkpoint_every=2", "train.keep_checkpoints=5",
                                     "train.sample_every=0", base=TINY_DDPM), "--out", out)
    assert code == 1
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == ["step_000002", "step_000004"]
    state = json.loads((out / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["step"] == 4
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoints" / "step_000004" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    summary_path = out / "summary.json"
    assert not summary_path.exists() or json.loads(summary_path.read_text())["status"] != "finished"
    assert not (out / "metrics.jsonl").exists() or all(loss == loss for loss in read_losses(out))


def test_the_divergence_message_names_the_cause_the_recipe_shows_and_the_newest_good_checkpoint(tmp_path):
    from difflab.jobs.session import divergence_message
    from difflab.recipe import parse_recipe

    recipe = parse_recipe({"schedule": {"kind": "ddpm", "beta_start": 0.5, "beta_end": 0.9}, "sample": {"sampler": "ddim"}, "model": {"kind": "unet2d"}})
    text = divergence_message(recipe, recipe.train, 7, [tmp_path / "checkpoints" / "step_000004"])
    assert "step 7" in text and "beta_start = 0.5" in text and "lower train.lr" not in text
    assert str(tmp_path / "checkpoints" / "step_000004") in text
    plain = parse_recipe({"schedule": {"kind": "ddpm"}, "sample": {"sampler": "ddim"}, "model": {"kind": "unet2d"}})
    text = divergence_message(plain, plain.train, 3, [])
    assert "lower train.lr" in text and "no checkpoint was written" in text
