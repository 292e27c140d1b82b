"""A stopped run is no dead end: sampling and eval use its newest checkpoint and say which step;
a run with no checkpoint at all says how to continue it, in the lab and on the command line."""

from __future__ import annotations

from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY, run_cli
from tests.test_headless_run import stop_after


def stopped_run(tmp_path, steps: int):
    """A tiny run stopped after `steps` steps (as the stop key or Ctrl-C does); 0: created, never trained."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    recipe = load_recipe(empty, TINY)
    run = RunDir.create(tmp_path / "stopped", recipe)
    if steps:
        stop_after(run, recipe, steps)
    return run.path


def test_sampling_a_stopped_run_uses_its_newest_checkpoint_and_says_which(tmp_path, capsys):
    run = stopped_run(tmp_path, 5)
    assert run_cli("sample", run, "--out", tmp_path / "samples") == 0
    out = capsys.readouterr()
    assert "using the step 5 checkpoint (the run has not finished)" in out.out + out.err
    assert any(p.name.endswith("final.png") for p in (tmp_path / "samples").iterdir())


def test_a_run_with_no_checkpoint_names_the_lab_key_and_the_command(tmp_path, capsys):
    run = stopped_run(tmp_path, 0)
    assert run_cli("sample", run, "--out", tmp_path / "samples") == 2
    err = capsys.readouterr().err
    assert "no trained model yet" in err and "c on the lab's Train screen (4)" in err
    assert f"difflab run --resume {run}" in err


def test_a_bad_set_on_sample_is_blamed_on_the_set_not_the_runs_recipe(tmp_path, capsys):
    run = stopped_run(tmp_path, 4)
    assert run_cli("sample", run, "--out", tmp_path / "samples", "--set", "sample.eta=nan") == 2
    err = capsys.readouterr().err
    assert "--set sample.eta=nan: input should be a finite number" in err
