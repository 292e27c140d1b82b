"""Devices: a recipe that asks for one this machine lacks, or a precision its device can't run,
is bad input (exit 2) that names what exists."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli, tiny_args

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_asking_for_cuda_without_it_lists_the_devices_here(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "r", *tiny_args("device='cuda'")) == 2
    err = capsys.readouterr().err
    assert "device = 'cuda': no CUDA device is available here; devices here: cpu" in err
    assert "Traceback" not in err


def test_fp16_on_the_cpu_is_refused_with_what_runs_instead(tmp_path, capsys):
    assert run_cli("run", "from-scratch", "--out", tmp_path / "r", *tiny_args("train.mixed_precision='fp16'")) == 2
    err = capsys.readouterr().err
    assert "train.mixed_precision = 'fp16' needs CUDA" in err and "'bf16'" in err
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())
