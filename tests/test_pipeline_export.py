"""A class-conditional run's RUN/pipeline samples a chosen class in plain diffusers, without difflab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_DDPM, run_cli, tiny_args

README = Path(__file__).resolve().parent.parent / "README.md"

# The README's code for a class-conditional run (the test runs it with the run's folder for RUN).
SNIPPET = '''\
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("RUN/pipeline", trust_remote_code=True)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # 50 steps instead of 1000
images = pipe(class_labels=[0, 1, 2], guidance_scale=3.0, num_inference_steps=50,
              generator=torch.Generator().manual_seed(0)).images
images[0].save("class0.png")
'''

# Run first in the subprocess: difflab is installed (editable) in this venv, so refuse it outright.
REFUSE_DIFFLAB = '''\
import sys

class RefuseDifflab:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "difflab":
            raise ImportError("difflab is not installed here")

sys.meta_path.insert(0, RefuseDifflab())
try:
    import difflab
except ImportError:
    print("no difflab")
'''

# Run after the snippet: what it made, and that the class and the scale change the images.
CHECKS = '''\
import json
same_noise = lambda label, scale: pipe(class_labels=[label], guidance_scale=scale, num_inference_steps=4,
                                      generator=torch.Generator().manual_seed(1), output_type="np").images
differ = lambda a, b: bool(abs(a - b).max() > 1e-4)
print(json.dumps({"images": [[*image.size, image.mode] for image in images], "class": type(pipe).__name__,
                  "classes_differ": differ(same_noise(0, 3.0), same_noise(1, 3.0)),
                  "scales_differ": differ(same_noise(0, 1.0), same_noise(0, 3.0)),
                  "difflab": [m for m in sys.modules if m.startswith("difflab")]}))
try:
    pipe(class_labels=[3])
except ValueError as error:
    print(error)
'''


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> Path:
    """A tiny class-conditional DDPM: the three generated shapes, 8 px RGB, one epoch."""
    run = tmp_path_factory.mktemp("conditional") / "run"
    assert run_cli("run", "ddpm-rgb-32", "--out", run, *tiny_args(
        "model.num_classes=3", "train.epochs=1", "train.sample_every=0", "train.checkpoint_every=0",
        "sample.gif=false", base=TINY_DDPM)) == 0
    return run


def test_plain_diffusers_samples_a_chosen_class_without_difflab(conditional_run, tmp_path):
    index = json.loads((conditional_run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalDDPMPipeline"]
    code = REFUSE_DIFFLAB + SNIPPET.replace("RUN/pipeline", str(conditional_run / "pipeline")) + CHECKS
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-I", "-c", code], check=False, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "no difflab"
    made = json.loads(lines[1])
    assert made["images"] == [[8, 8, "RGB"]] * 3 and made["class"] == "ClassConditionalDDPMPipeline"
    assert made["classes_differ"] and made["scales_differ"] and made["difflab"] == []
    assert "class_labels=[3]: this model knows classes 0..2" in lines[2]
    assert (tmp_path / "class0.png").is_file()


def test_difflab_samples_the_exported_class_conditional_pipeline_too(conditional_run, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sample", "--pipeline", conditional_run / "pipeline", "--class-label", "2", "--steps", "2",
                   "--num-images", "2", "--out", out, "--device", "cpu") == 0
    assert (out / "ddim-2steps-seed0-final.png").is_file()


def test_its_model_card_names_the_classes_and_shows_the_code(conditional_run):
    _, front, body = (conditional_run / "pipeline" / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    assert yaml.safe_load(front)["tags"] == ["pytorch", "diffusers", "class-conditional", "difflab"]
    assert "| 0 | circle |\n| 1 | square |\n| 2 | triangle |" in body
    folder = conditional_run / "pipeline"
    assert f'DiffusionPipeline.from_pretrained("{folder}", trust_remote_code=True)' in body
    assert "pipe(class_labels=[0, 1, 2], guidance_scale=1.0, num_inference_steps=50," in body


def test_the_readme_shows_the_code_this_test_runs():
    assert SNIPPET in README.read_text(encoding="utf-8")
