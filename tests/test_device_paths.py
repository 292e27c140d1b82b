"""The paths that differ on a GPU, run on DIFFLAB_TEST_DEVICE: cuda when benchmarks/gpu_check.sh
runs `pytest -m device` on a GPU machine (cpu to try them here; unset, they skip). On CUDA each training step also
runs under torch.cuda.set_sync_debug_mode("error"), so any host sync inside a step fails the test."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from difflab.jobs import training
from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY_DDPM, read_losses, run_cli, tiny_args
from tests.test_headless_run import stop_after

DEVICE = os.environ.get("DIFFLAB_TEST_DEVICE", "")
pytestmark = [
    pytest.mark.device,
    # On the CPU these paths are covered by test_ddpm_runs (bf16), test_headless_run (exact resume) and
    # test_compile: run again here they only cost the suite time. `DIFFLAB_TEST_DEVICE=cpu` runs them anyway.
    pytest.mark.skipif(not DEVICE, reason="device tests: set DIFFLAB_TEST_DEVICE (gpu_check.sh sets cuda)"),
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA here"),
]


def on_device(*extra: str) -> list[str]:
    return tiny_args(*extra, f"device='{DEVICE}'", base=TINY_DDPM)


@pytest.fixture
def no_sync_in_steps(monkeypatch):
    """On CUDA: a host sync inside a training step raises (set_sync_debug_mode 'error')."""
    if DEVICE != "cuda":
        return
    original = training._Training.train_step

    def strict(self, micro_batches):
        torch.cuda.set_sync_debug_mode("error")
        try:
            original(self, micro_batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(training._Training, "train_step", strict)


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"] if DEVICE == "cuda" else ["bf16"])  # cpu: "no" is every other test
def test_training_on_the_device_finishes_with_finite_losses(tmp_path, precision, no_sync_in_steps):
    out = tmp_path / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", out,
                   *on_device(f"train.mixed_precision='{precision}'", "train.ema=true",
                              "train.max_grad_norm=1.0")) == 0
    losses = read_losses(out)
    assert losses and all(loss == loss and abs(loss) < 1e3 for loss in losses)
    assert (out / "samples" / "final.png").exists()


def test_resume_on_the_device_is_exact(tmp_path):
    whole = tmp_path / "whole"
    assert run_cli("run", "ddpm-rgb-32", "--out", whole, *on_device()) == 0
    recipe = load_recipe(whole / "recipe.toml")
    parted = tmp_path / "parted"
    stop_after(RunDir.create(parted, recipe), recipe, 5)
    assert run_cli("run", "--resume", parted) == 0
    assert read_losses(parted) == read_losses(whole)
    a = load_file(whole / "checkpoints" / "step_000012" / "model.safetensors")
    b = load_file(parted / "checkpoints" / "step_000012" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(DEVICE != "cuda", reason="inductor on a UNet2DModel takes minutes on a CPU (test_compile.py "
                                            "covers sample.compile there with the small BasicUNet)")
def test_sampling_a_run_on_the_device_with_a_compiled_sampler(tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", out, *on_device("train.epochs=1")) == 0
    assert run_cli("sample", out, "--out", tmp_path / "plain", "--device", DEVICE) == 0
    assert run_cli("sample", out, "--out", tmp_path / "compiled", "--device", DEVICE,
                   "--set", "sample.compile=true") == 0
    import numpy as np
    from PIL import Image

    plain, = (tmp_path / "plain").glob("*final.png")
    compiled, = (tmp_path / "compiled").glob("*final.png")
    difference = np.abs(np.asarray(Image.open(plain), dtype=float) - np.asarray(Image.open(compiled), dtype=float))
    assert difference.mean() < 2.0  # 8-bit levels: compiled kernels round differently, never more
