"""Sharing a run: the pipeline's model card (`difflab export`), and `difflab push`'s refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from difflab.recipe import Recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY_DDPM, run_cli, tiny_args

# What `difflab eval RUN` writes into summary.json (EvalJob), for the card's evaluation table.
EVAL_ROW = {"sampler": "ddim", "steps": 4, "samples": 128, "frechet": 51.2, "frechet_real": 3.1,
            "frechet_noise": 210.0, "frechet_normalised": 0.2302, "confidence": 0.91, "class_entropy_bits": 1.52,
            "class_entropy_max_bits": 1.585, "class_counts": {"circle": 40, "square": 44, "triangle": 44},
            "held_out_samples": 13, "classifier_accuracy": 1.0, "class_accuracy": None, "warnings": []}


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory) -> Path:
    """A tiny unconditional DDPM run (8 px RGB shapes, one epoch)."""
    run = tmp_path_factory.mktemp("sharing") / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *tiny_args(
        "train.epochs=1", "train.sample_every=0", "train.checkpoint_every=0", "sample.gif=false",
        base=TINY_DDPM)) == 0
    return run


def read_card(folder: Path) -> tuple[dict, str]:
    """The card's YAML front matter and its body."""
    _, front, body = (folder / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(front), body


def test_a_finished_ddpm_run_writes_the_model_card_of_its_pipeline(ddpm_run):
    meta, body = read_card(ddpm_run / "pipeline")
    assert meta["library_name"] == "diffusers" and meta["license"] == "apache-2.0"
    assert meta["tags"] == ["pytorch", "diffusers", "unconditional-image-generation", "difflab"]
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    recipe = (ddpm_run / "recipe.toml").read_text().strip()
    assert f"```toml\n{recipe}\n```" in body
    summary = RunDir(ddpm_run).read_summary()
    assert "| optimizer steps | 4 |" in body and f"| final loss | {summary['final_loss']:.4g} |" in body
    assert "| training time | " in body and "| dataset | shapes (64 images) |" in body
    assert "](samples.png)" in body and (ddpm_run / "pipeline" / "samples.png").read_bytes() == (
        ddpm_run / "samples" / "final.png").read_bytes()
    assert f'DDPMPipeline.from_pretrained("{ddpm_run / "pipeline"}")' in body
    assert "## Evaluation" not in body  # eval.enabled = false: no table of nothing


def test_difflab_export_writes_the_pipeline_again_with_the_evaluation(ddpm_run, tmp_path, capsys):
    run = RunDir(ddpm_run)
    run.update_summary({"eval": EVAL_ROW})
    before = load_file(run.model_dir / "diffusion_pytorch_model.safetensors")
    for path in sorted(run.pipeline_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    run.pipeline_dir.rmdir()
    assert run_cli("export", ddpm_run) == 0
    assert "the diffusers pipeline of the finished model" in capsys.readouterr().out
    after = load_file(run.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    _, body = read_card(run.pipeline_dir)
    table = body[body.index("## Evaluation"):]
    assert "Fréchet distance, normalised (0 real, 1 noise)" in table and "| ddim | 4 | 128 | 0.2302 | 0.91 |" in table
    assert "class accuracy" not in table  # unconditional: no class was asked for


def test_a_run_without_a_ddpm_schedule_has_nothing_to_export(tmp_path, capsys):
    run = RunDir.create(tmp_path / "toy", Recipe())
    run.release()
    assert run_cli("export", run.path) == 2
    assert "a toy-schedule run has no diffusers pipeline" in capsys.readouterr().err


def push(run: Path, env: dict) -> subprocess.CompletedProcess:
    """`difflab push RUN someone/model` in a process of its own, with this environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "difflab", "push", str(run), "someone/model"], check=False,
                          capture_output=True, text=True, timeout=120, env={**base, **env})


@pytest.mark.parametrize("env,says", [
    ({}, "no Hugging Face token; log in with `hf auth login`"),
    ({"HF_TOKEN": "hf_not_a_real_token", "HF_HUB_OFFLINE": "1"}, "switched off here (HF_HUB_OFFLINE=1)"),
    ({"HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:9"},
     "the Hugging Face Hub could not be reached or refused the upload ("),
], ids=["no-token", "offline", "no-network"])
def test_push_refuses_with_one_line_and_exit_2(ddpm_run, tmp_path, env, says):
    result = push(ddpm_run, {"HF_HOME": str(tmp_path / "hf"), **env})  # an empty home: no stored token
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_push_without_a_pipeline_says_to_export_first(tmp_path, capsys):
    run = RunDir.create(tmp_path / "run", Recipe())
    run.release()
    assert run_cli("push", run.path, "someone/model") == 2
    assert f"write it with `difflab export {run.path}`" in capsys.readouterr().err
