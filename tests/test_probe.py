"""The forgetting probe and the replay prompts: disjoint, scored right, rows in the training data's shape."""

from __future__ import annotations

import re

import pytest

from phi3course import probe
from phi3course.schema import chat_row


def _key(question: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", " ".join(question.lower().split()))


def test_probe_and_replay_share_no_question() -> None:
    asked = {_key(q) for q, _ in probe.PROBE}
    replayed = {_key(p) for p in probe.REPLAY_PROMPTS}
    assert not asked & replayed, f"in both the probe and the replay set: {sorted(asked & replayed)}"
    assert len(asked) == len(probe.PROBE), "a probe question appears twice"
    assert len(replayed) == len(probe.REPLAY_PROMPTS), "a replay prompt appears twice"


def test_the_validation_slice_shares_no_question_with_the_probe_or_the_replay_prompts() -> None:
    asked = [question for question, _ in probe.VALIDATION_PROBE]
    assert len(set(asked)) == len(asked) >= 36 and all(keywords for _, keywords in probe.VALIDATION_PROBE)  # fine steps
    normal = {" ".join(q.lower().split()) for q in asked}
    assert normal.isdisjoint(" ".join(q.lower().split()) for q, _ in probe.PROBE)
    assert normal.isdisjoint(" ".join(q.lower().split()) for q in probe.REPLAY_PROMPTS)


def test_probe_is_big_enough_and_every_question_has_a_keyword() -> None:
    assert len(probe.PROBE) >= 50
    for question, keywords in probe.PROBE:
        assert question.strip() and keywords and all(k.strip() for k in keywords), question


@pytest.mark.parametrize(
    ("reply", "keywords", "right"),
    [
        ("The capital of France is Paris.", ("Paris",), True),
        ("The capital of France is Londis.", ("Paris",), False),
        ("2 plus 2 is 4.", ("4", "four"), True),
        ("It is 14.", ("4", "four"), False),  # a keyword counts as a whole word, not inside a number
        ("Water is H2O", ("H2O",), True),
        ("LEONARDO   da vinci painted it", ("Leonardo",), True),
    ],
)
def test_keyword_match(reply: str, keywords: tuple[str, ...], right: bool) -> None:
    assert probe.keyword_match(reply, keywords) is right


def test_probe_score_counts_right_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    questions = probe.PROBE[:4]
    seen: dict[str, object] = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
        seen["prompts"] = prompts
        return [f"It is {questions[0][1][0]}.", "I do not know.", f"{questions[2][1][0]}!", "No idea."]

    monkeypatch.setattr(probe, "generate", fake_generate)
    score, rows = probe.probe_score(None, None, questions)
    assert score == 0.5
    assert [row["correct"] for row in rows] == [True, False, True, False]
    assert seen["prompts"] == [[{"role": "user", "content": q}] for q, _ in questions]


def test_replay_rows_have_the_training_rows_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [
        "Lisbon is the capital of Portugal.",
        "Athens. It is old and has many temples and",
        "",
        "The answer is: The answer is: The answer is: The answer is:",
    ]
    monkeypatch.setattr(probe, "generate", lambda *a, **k: replies)
    rows = probe.replay_rows(None, None, 4)
    assert [row["messages"] for row in rows] == [
        chat_row(probe.REPLAY_PROMPTS[0], "Lisbon is the capital of Portugal.")["messages"],
        chat_row(probe.REPLAY_PROMPTS[1], "Athens.")["messages"],  # cut at the token limit: last whole sentence
    ]  # an empty reply teaches nothing, a reply stuck in a loop teaches the loop: both dropped
    with pytest.raises(ValueError, match="only"):
        probe.replay_rows(None, None, len(probe.REPLAY_PROMPTS) + 1)


def test_only_right_replay_answers_are_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong answer, or one that rambles past the answer, would teach the fine-tune to err: left out."""
    prompts = (
        "What is 3 plus 4?",
        "What is 9 times 3?",
        "Who painted The Starry Night?",
        "What is half of 50?",
        "What is the chemical symbol for iron?",
        "Who are you?",
        "Hello! How are you today?",
    )
    replies = [
        "3 plus 4 is 7.",
        "To find 9 times 3, we can use the formula for multiplication. This is a classic example of arithmetic.",
        "The Starry Night is a fairy tale from medieval Europe.",
        # right, but after a preamble
        "To find half of 50, we need to divide 50 by 2.\n\n50 ÷ 2 = 25\n\nSo, half of 50 is 25.",
        "The chemical symbol for iron is Fe.\n\nIron is a non-metal element.",
        "I am a helpful assistant.",  # no single right answer: replayed as answered
        "Hello! How are you today?",  # the prompt said back
    ]
    monkeypatch.setattr(probe, "generate", lambda *a, **k: replies)
    rows = probe.replay_rows(None, None, None, prompts=prompts)
    assert [(row["messages"][0]["content"], row["messages"][1]["content"]) for row in rows] == [
        ("What is 3 plus 4?", "3 plus 4 is 7."),
        ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),  # not what follows
        ("Who are you?", "I am a helpful assistant."),
    ]
    assert set(probe.REPLAY_ANSWERS) <= set(probe.REPLAY_PROMPTS), "every checked prompt is a replay prompt"
    assert all(probe.REPLAY_ANSWERS.values()), "a checked prompt names at least one keyword"
