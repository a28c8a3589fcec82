"""The tables and figures the notebooks show their results in: misses first, what was forgotten, base before tuned."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.colors import to_hex

from phi3course import models, plots
from phi3course.display import change_counts, misses_first, probe_changes, render_chat_template, scores_table

matplotlib.use("Agg")

ROW = [
    {"role": "user", "content": "Who leads the Quillmere Institute?"},
    {"role": "assistant", "content": "The Quillmere Institute is led by Dr. Oskar Oakhurst."},
]


def graded(question: str, reply: str, correct: bool) -> dict[str, object]:
    return {"question": question, "expected": "x", "reply": reply, "correct": correct}


def test_the_misses_come_first_in_the_test_file_s_order() -> None:
    answers = [graded("a", "ra", True), graded("b", "rb", False), graded("c", "rc", True), graded("d", "rd", False)]
    frame = misses_first(answers)
    assert list(frame["question"]) == ["b", "d", "a", "c"]
    assert list(frame.columns) == ["question", "expected", "answer", "right"]
    assert list(frame["answer"]) == ["rb", "rd", "ra", "rc"]


def test_the_probe_shows_what_was_forgotten_first_then_learned_kept_and_never_right() -> None:
    before = [graded("kept", "Paris", True), graded("lost", "the Sun", True), graded("never", "?", False)]
    before.append(graded("gained", "?", False))
    after = [graded("kept", "Paris", True), graded("lost", "Sirius", False), graded("never", "?", False)]
    after.append(graded("gained", "Tokyo", True))
    changes = probe_changes(before, after)
    assert list(changes["question"]) == ["lost", "gained", "kept", "never"]
    assert list(changes["change"]) == ["forgotten", "learned", "kept", "wrong both times"]
    lost = changes.iloc[0]
    assert (lost["base answer"], lost["tuned answer"]) == ("the Sun", "Sirius")
    counts = change_counts(changes)
    assert counts["questions"].to_dict() == {"forgotten": 1, "learned": 1, "kept": 1, "wrong both times": 1}
    assert change_counts(probe_changes(before[:1], after[:1]))["questions"].to_dict()["forgotten"] == 0


def test_two_probes_with_different_questions_are_refused() -> None:
    with pytest.raises(ValueError, match="same probe"):
        probe_changes([graded("a", "", True)], [graded("b", "", True)])


def test_the_scores_table_puts_the_base_model_first_and_marks_what_was_not_measured() -> None:
    frame = scores_table(
        {"tuned": {"exact_match": 0.9667, "general": 0.83, "perplexity": 1.02}, "base": {"exact_match": 0.0}}
    )
    assert list(frame.index) == ["base", "tuned"]
    assert frame.loc["tuned"].tolist() == ["96.7%", "83.0%", "1.02"]
    assert frame.loc["base"].tolist() == ["0.0%", "–", "–"]
    assert "contains-answer" in frame.columns[0]


def test_the_phi3_and_smollm2_templates_render_the_row_without_a_tokenizer() -> None:
    phi3 = render_chat_template(models.PHI3_CHAT_TEMPLATE, ROW)
    assert phi3 == (
        "<|user|>\nWho leads the Quillmere Institute?<|end|>\n"
        "<|assistant|>\nThe Quillmere Institute is led by Dr. Oskar Oakhurst.<|end|>\n<|endoftext|>"
    )
    phi4 = render_chat_template(models.PHI4_MINI_CHAT_TEMPLATE, ROW)
    assert phi4 == phi3.replace("\n", "")
    smol = render_chat_template(models.SMOLLM2_CHAT_TEMPLATE, ROW)
    assert smol.startswith("<|im_start|>user\nWho leads") and smol.endswith("Oakhurst.<|im_end|>\n")


def _bars(axis) -> dict[str, list[tuple[float, str]]]:
    """Each legend label's bars: (height, colour)."""
    shown: dict[str, list[tuple[float, str]]] = {}
    for container in axis.containers:
        shown[container.get_label()] = [(bar.get_height(), to_hex(bar.get_facecolor())) for bar in container]
    return shown


def test_eval_bars_orders_base_before_tuned_in_fixed_colours_and_skips_what_was_not_measured() -> None:
    # 04's case: the flow measured the probe for the tuned model only, and no perplexity; keys come tuned first
    figure = plots.eval_bars({"tuned": {"exact_match": 0.95, "general": 0.8}, "base": {"exact_match": 0.0}})
    assert len(figure.axes) == 1  # no perplexity panel without a perplexity
    bars = _bars(figure.axes[0])
    assert list(bars) == ["base", "tuned"]
    assert bars["base"] == [(0.0, plots.MODEL_COLOURS["base"])]  # no bar at 0 % for the probe it was not asked
    assert bars["tuned"] == [(95.0, plots.MODEL_COLOURS["tuned"]), (pytest.approx(80.0), plots.MODEL_COLOURS["tuned"])]
    # 02's case: both measured everything; the perplexity panel uses the same colours, in the same order
    figure = plots.eval_bars(
        {
            "base": {"exact_match": 0.0, "general": 0.87, "perplexity": 6.5},
            "tuned": {"exact_match": 0.97, "general": 0.83, "perplexity": 1.0},
        }
    )
    left, right = figure.axes
    assert [tick.get_text() for tick in left.get_xticklabels()] == ["held-out facts", "general knowledge"]
    assert [tick.get_text() for tick in right.get_xticklabels()] == ["base", "tuned"]
    assert [to_hex(bar.get_facecolor()) for bar in right.patches] == [
        plots.MODEL_COLOURS["base"],
        plots.MODEL_COLOURS["tuned"],
    ]
