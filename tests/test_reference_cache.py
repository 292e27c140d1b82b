"""The reference classifier is trained the first time it is asked for, from wherever it is asked:
guided sampling asks from inside its no-grad loop (issue 19 item 3 crashed there with
"element 0 of tensors does not require grad")."""

from __future__ import annotations

import torch

from difflab.diffusion.data import load_dataset
from difflab.diffusion.reference import ClassifierSettings, reference_classifier
from difflab.recipe import parse_recipe


def test_an_uncached_reference_classifier_trains_even_when_asked_for_under_no_grad(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "empty-cache"))
    recipe = parse_recipe({"dataset": {"source": "shapes", "num_images": 64, "image_size": 8, "channels": 3}})
    data = load_dataset(recipe.dataset, None, 0)
    settings = ClassifierSettings(features=8, steps=5, batch_size=16)
    with torch.no_grad():  # as generate() is when guidance builds its loss
        reference = reference_classifier(data, "cpu", settings=settings)
    assert reference.built_in_s is not None  # trained now, not read from a cache
    assert any((tmp_path / "empty-cache" / "classifiers").iterdir())


def test_two_askers_of_one_uncached_classifier_train_it_once(tmp_path, monkeypatch):
    """Two processes (here two threads, each with its own lock file descriptor) ask at once: the
    second waits for the first and reads what it cached instead of training the same again."""
    import threading

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    recipe = parse_recipe({"dataset": {"source": "shapes", "num_images": 64, "image_size": 8, "channels": 3}})
    data = load_dataset(recipe.dataset, None, 0)
    settings = ClassifierSettings(features=8, steps=40, batch_size=16)
    results = []
    askers = [threading.Thread(target=lambda: results.append(reference_classifier(data, "cpu", settings=settings)))
              for _ in range(2)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(timeout=120)
    assert len(results) == 2
    assert sorted(r.built_in_s is None for r in results) == [False, True]  # one trained, one read it
    assert results[0].held_out_accuracy == results[1].held_out_accuracy
