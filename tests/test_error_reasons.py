"""Library errors reach people as one line that says something: a resume with another recipe's
model names the first mismatched weight, not only "Error(s) in loading state_dict for ...:"."""

from __future__ import annotations

from difflab.errors import reason
from difflab.recipe import load_recipe
from difflab.runtime.runs import RunDir
from tests.conftest import TINY, run_cli
from tests.test_headless_run import stop_after


def test_reason_takes_the_first_item_of_an_announced_list_and_stays_one_short_line():
    error = RuntimeError("Error(s) in loading state_dict for Linear:\n\tsize mismatch for weight: copying a "
                         "param with shape torch.Size([4, 2]) from checkpoint\n\tsize mismatch for bias: ...")
    assert reason(error) == ("Error(s) in loading state_dict for Linear: size mismatch for weight: copying a "
                             "param with shape torch.Size([4, 2]) from checkpoint")
    assert reason(ValueError("x" * 1000)).endswith("…") and len(reason(ValueError("x" * 1000))) == 300
    assert reason(KeyError()) == "KeyError"


def test_a_resume_whose_recipe_no_longer_fits_its_checkpoint_names_the_mismatch(tmp_path, capsys):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    recipe = load_recipe(empty, TINY)
    run = RunDir.create(tmp_path / "run", recipe)
    stop_after(run, recipe, 4)
    changed = load_recipe(empty, [*TINY, "model.channels=[8, 16, 32]"])
    (run.path / "recipe.toml").write_text((run.path / "recipe.toml").read_text().replace(
        "channels = [8, 16, 16]", "channels = [8, 16, 32]"))
    assert changed.model.channels == [8, 16, 32]
    assert run_cli("run", "--resume", run.path) == 2
    err = capsys.readouterr().err
    assert "does not match this recipe's model" in err and "size mismatch for" in err
