"""The DDPM chapter end to end: objectives, training features, exact resume, pipelines out and in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY_DDPM, read_losses, run_cli, tiny_args
from tests.test_headless_run import stop_after


def ddpm_args(*extra: str) -> list[str]:
    return tiny_args(*extra, base=TINY_DDPM)


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("objective", ["epsilon", "x0", "v_prediction"])
def test_each_objective_trains_and_its_loss_falls(tmp_path, objective):
    run = tmp_path / objective
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *ddpm_args(
        f"train.objective={objective}", "train.epochs=12", "train.lr=3e-3", "train.sample_every=0",
        "train.checkpoint_every=0", "sample.gif=false", "dataset.flip=false")) == 0
    losses = read_losses(run)
    assert mean(losses[-4:]) < 0.8 * mean(losses[:4])
    scheduler = json.loads((run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == {"x0": "sample"}.get(objective, objective)


def test_min_snr_weighting_and_bf16_autocast_train_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *ddpm_args(
        "train.loss_weighting=min-snr", "train.mixed_precision=bf16", "train.sample_every=0")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and all(l == l for l in read_losses(run))  # no NaN


def test_a_ddpm_run_writes_pipeline_gif_and_lr_schedule(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *ddpm_args(
        "train.lr_schedule=cosine", "train.warmup_steps=3", "train.ema=true")) == 0
    assert (run / "pipeline" / "model_index.json").is_file()
    assert (run / "samples" / "denoising.gif").is_file() and (run / "samples" / "trajectory.png").is_file()
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] < lrs[1]  # still warming up at step 2
    assert lrs[-1] < max(lrs)  # the cosine decays after the warm-up
    assert any(k.startswith("ema.") for k in load_file(run / "checkpoints" / "step_000012" / "state.safetensors"))


def test_resume_is_exact_with_ema_accumulation_clipping_warmup_and_dropout(tmp_path):
    extra = ("train.ema=true", "train.gradient_accumulation=2", "train.max_grad_norm=0.5",
             "train.lr_schedule=cosine", "train.warmup_steps=2", "model.dropout=0.1", "dataset.flip=true",
             "train.epochs=6", "train.batch_size=8")
    whole = tmp_path / "whole"
    assert run_cli("run", "ddpm-rgb-32", "--out", whole, *ddpm_args(*extra)) == 0
    recipe = load_recipe(whole / "recipe.toml")
    assert recipe.train.gradient_accumulation == 2
    parted = RunDir.create(tmp_path / "parted", recipe)
    stop_after(parted, recipe, 5)
    assert run_cli("run", "--resume", parted.path) == 0
    assert read_losses(parted.path) == read_losses(whole)
    final = sorted(p.name for p in RunDir(whole).list_checkpoints())[-1]
    for name in ("model.safetensors", "state.safetensors"):
        a, b = load_file(whole / "checkpoints" / final / name), load_file(parted.path / "checkpoints" / final / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_pipeline_loads_and_samples_in_plain_diffusers(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *ddpm_args("train.epochs=1")) == 0
    code = (
        "import sys\n"
        "from diffusers import DDPMPipeline\n"
        f"pipe = DDPMPipeline.from_pretrained({str(run / 'pipeline')!r})\n"
        "images = pipe(batch_size=2, num_inference_steps=3, output_type='np').images\n"
        "assert images.shape == (2, 8, 8, 3), images.shape\n"
        "assert not [m for m in sys.modules if m.startswith('difflab')]\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained_ddpm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddpm") / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *ddpm_args("train.epochs=1", "sample.gif=false")) == 0
    return run


@pytest.mark.parametrize("sampler", ["ddpm", "pndm", "dpm-solver++", "euler", "euler-ancestral", "lms", "unipc"])
def test_difflab_sample_from_a_run_with_any_sampler(trained_ddpm_run, sampler, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("sample", trained_ddpm_run, "--sampler", sampler, "--steps", "3", "--out", out) == 0
    assert (out / f"{sampler}-3steps-seed0-final.png").is_file()
    assert (out / f"{sampler}-3steps-seed0-trajectory.png").is_file()


def test_heun_on_a_cosine_schedule_run_is_refused_with_the_samplers_that_can(trained_ddpm_run, tmp_path, capsys):
    assert run_cli("sample", trained_ddpm_run, "--sampler", "heun", "--steps", "3", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "'heun'" in err and "squaredcos_cap_v2" in err and "use one of: ddpm, ddim" in err
    assert not (tmp_path / "out").exists()


def test_difflab_sample_from_a_pipeline_folder(trained_ddpm_run, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sample", "--pipeline", trained_ddpm_run / "pipeline", "--sampler", "ddim", "--steps", "3",
                   "--num-images", "2", "--out", out) == 0
    assert (out / "ddim-3steps-seed0-final.png").is_file() and (out / "ddim-3steps-seed0-denoising.gif").is_file()


@pytest.mark.parametrize("args,fragment", [
    (["--sampler", "dpm"], "sample.sampler='dpm': input should be"),
    (["--steps", "5000"], "must be between 1 and schedule.num_train_timesteps = 1000"),
    (["--set", "train.objective=x0"], "predicts 'epsilon'"),
])
def test_bad_sampling_requests_exit_2_with_one_line(trained_ddpm_run, capsys, args, fragment):
    target = ["--pipeline", trained_ddpm_run / "pipeline"] if "train.objective=x0" in args else [trained_ddpm_run]
    assert run_cli("sample", *target, *args, "--out", trained_ddpm_run / "x") == 2
    assert fragment in capsys.readouterr().err


def test_a_folder_that_is_not_a_pipeline_or_an_unknown_hub_id_exits_2(trained_ddpm_run, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli("sample", "--pipeline", trained_ddpm_run / "model") == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err
    assert run_cli("sample", "--pipeline", "nobody/no-such-ddpm-model") == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err


def test_the_model_command_reports_parameters_shapes_and_flops(capsys):
    assert run_cli("model", "unet2d-digits") == 0
    out = capsys.readouterr().out
    assert "1,707,009 parameters" in out and "GFLOPs" in out and "AttnDownBlock2D" in out and "(1, 28, 28)" in out
    assert run_cli("model", "ddpm-rgb-32") == 0
    assert "18,536,323 parameters" in capsys.readouterr().out


def test_two_processes_train_one_recipe_through_accelerate(tmp_path):
    # `accelerate launch` on GPUs and torchrun on CPUs set the same environment that
    # Accelerate reads; two gloo processes exercise sharding, no_sync and main-only writes.
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "difflab", "run", "ddpm-rgb-32", "--out", str(run),
               *ddpm_args("train.epochs=2", "train.batch_size=8", "sample.gif=false", "train.ema=true")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["steps"] == 2 * 64 // (8 * 2)  # each step takes a batch per process
    assert result.stdout.count("run summary") == 1  # only the main process reports
    assert (run / "pipeline" / "model_index.json").is_file()
