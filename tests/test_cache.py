"""The base model's answers, computed once and kept: reused only while nothing that decides them changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phi3course import cache, recipe


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "answers"
    monkeypatch.setattr(cache, "answers_dir", lambda: folder)
    monkeypatch.delenv("COURSE_ANSWER_CACHE", raising=False)
    return folder


@pytest.fixture
def model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cache, "WHOLE_FILE_BYTES", 1024)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"\0" * 1025)  # "weights": known by size and time
    return folder


class Asker:
    """compute() for the cache, counting how often it really asks."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def ask_once(question):  # two functions that ask, with different source
    return question


def ask_twice(question):
    return question + question


def test_answers_are_computed_once_and_then_read_back_saying_so(store, model_folder, capsys) -> None:
    asker = Asker({"exact_match": 0.5, "answers": [{"reply": "Paris", "correct": True}]})
    first = cache.remembered("held-out", asker, model=model_folder, test=[{"q": "a"}], precision="fp32")
    assert "earlier run" not in capsys.readouterr().out
    again = cache.remembered("held-out", asker, model=model_folder, test=[{"q": "a"}], precision="fp32")
    assert asker.calls == 1 and again == first
    assert "held-out: the base model's answers from an earlier run" in capsys.readouterr().out
    assert (pair := cache.remembered("validation", Asker((0.25, 1.0)), model=model_folder)) == (0.25, 1.0)
    assert cache.remembered("validation", Asker(None), model=model_folder) == [0.25, 1.0] != pair  # JSON: a list


@pytest.mark.parametrize("change", ["questions", "settings", "config file", "weights rewritten", "code"])
def test_a_change_to_what_decides_the_answers_asks_again(store, model_folder, change) -> None:
    asker = Asker(["first"])
    inputs = {"test": ["Who leads it?"], "precision": "fp32"}
    cache.remembered("held-out", asker, model=model_folder, code=[ask_once], **inputs)
    code = [ask_once]
    if change == "questions":
        inputs["test"] = ["Who runs it?"]
    elif change == "settings":
        inputs["precision"] = "bf16"
    elif change == "config file":  # same name, same size, new content
        (model_folder / "config.json").write_text('{"hidden_size": 9}')
    elif change == "weights rewritten":  # a reconverted model: same size, written again
        weights = model_folder / "model.safetensors"
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    else:
        code = [ask_twice]
    cache.remembered("held-out", asker, model=model_folder, code=code, **inputs)
    assert asker.calls == 2


def test_a_small_file_rewritten_with_the_same_content_keeps_the_answers(store, model_folder) -> None:
    """The course writes the tokenizer beside the weights at every run: that alone must not ask again."""
    asker = Asker(["kept"])
    cache.remembered("replay", asker, model=model_folder, replay=60)
    config = model_folder / "config.json"
    config.write_text(config.read_text())
    os.utime(config, ns=(1, 1))
    cache.remembered("replay", asker, model=model_folder, replay=60)
    assert asker.calls == 1


def test_nothing_is_kept_for_a_hub_id_when_switched_off_or_for_code_without_source(
    store, model_folder, monkeypatch
) -> None:
    asker = Asker(["x"])
    for _ in range(2):
        cache.remembered("held-out", asker, model="microsoft/Phi-3-mini-4k-instruct")
        cache.remembered("held-out", asker, model=model_folder, code=[len])  # a built-in has no source to key on
    assert asker.calls == 4 and not store.exists()
    monkeypatch.setenv("COURSE_ANSWER_CACHE", "0")
    cache.remembered("held-out", asker, model=model_folder)
    cache.remembered("held-out", asker, model=model_folder)
    assert asker.calls == 6 and not store.exists()


def test_a_damaged_entry_is_computed_again_and_rewritten(store, model_folder) -> None:
    asker = Asker({"general": 0.8})
    cache.remembered("held-out", asker, model=model_folder)
    (entry,) = store.iterdir()
    entry.write_text('{"kind": "held-out", "val')  # cut short
    assert cache.remembered("held-out", asker, model=model_folder) == {"general": 0.8}
    assert asker.calls == 2
    assert cache.remembered("held-out", asker, model=model_folder) == {"general": 0.8} and asker.calls == 2


def test_model_selection_takes_the_base_models_scores_for_step_0_without_asking() -> None:
    from transformers import TrainerState

    selection = recipe.ModelSelection(None, [{"answer": "x"}], 2, 0.95, 0.9)
    selection.base = [0.05, 0.8]  # as the cache gives it back
    row = selection.check(None, TrainerState(global_step=0))  # no model to ask: the known scores are used
    assert (row["facts"], row["general"], row["general_vs_base"]) == (0.05, 0.8, 1.0)
    with pytest.raises(AttributeError):
        selection.check(None, TrainerState(global_step=2))  # later checks ask the model


def test_a_cache_that_may_only_be_read_gives_the_answers_and_keeps_none(store, model_folder) -> None:
    """A workshop's shared COURSE_CACHE may be read-only for learners: the notebook goes on."""
    store.parent.joinpath("answers").write_text("a file where the folder should be")  # nothing can be written
    asker = Asker([1, 2])
    assert cache.remembered("replay", asker, model=model_folder) == [1, 2]
    assert cache.remembered("replay", asker, model=model_folder) == [1, 2] and asker.calls == 2
