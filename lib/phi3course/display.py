"""Small helpers that turn results into tables a notebook shows well (and papermill keeps)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd


def table(rows: Iterable[Sequence[Any]], columns: Sequence[str] = ("what", "value")) -> pd.DataFrame:
    """Rows as a DataFrame whose index is the first column, so no meaningless 0, 1, 2 shows."""
    frame = pd.DataFrame([list(row) for row in rows], columns=list(columns))
    return frame.set_index(columns[0])


def rows_table(rows: Sequence[dict[str, Any]], width: int = 120) -> pd.DataFrame:
    """Data rows for reading: chat rows as question/answer columns, text rows shortened to ``width``."""
    shown = []
    for row in rows:
        item: dict[str, Any] = {}
        if "messages" in row:
            for message in row["messages"]:
                item.setdefault(message["role"], message["content"][:width])
        else:
            item["text"] = row["text"].strip()[:width]
        item.update({k: v for k, v in row.items() if k not in {"messages", "text"}})
        shown.append(item)
    return pd.DataFrame(shown)


def show_source(function: Any) -> Any:
    """A function's source, highlighted: for code a learner should read where it lives rather than copy."""
    import inspect

    from IPython.display import Code, display

    code = Code(inspect.getsource(function), language="python")
    display(code)
    return None


# What each score measures, in the words every notebook shows.
SCORE_COLUMNS = (
    "held-out facts (contains-answer accuracy)",
    "general knowledge (probe)",
    "perplexity of the test answers",
)


def score_order(labels: Iterable[str]) -> list[str]:
    """Labels in the order every table and plot uses: the base model first, the tuned one next, then the rest."""
    labels = list(labels)
    first = [label for label in ("base", "tuned") if label in labels]
    return first + [label for label in labels if label not in first]


def percent(value: float | None) -> str:
    """A share as a percentage for a table; ``–`` where it was not measured."""
    return "–" if value is None else f"{value:.1%}"


def scores_table(scores: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model, base first: held-out contains-answer accuracy, the general probe, answer perplexity."""
    rows = []
    for label in score_order(scores):
        result = scores[label]
        perplexity = result.get("perplexity")
        rows.append(
            (
                label,
                percent(result.get("exact_match")),
                percent(result.get("general")),
                "–" if perplexity is None else f"{perplexity:.2f}",
            )
        )
    return table(rows, ["model", *SCORE_COLUMNS])


def misses_first(answers: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Graded answers (``question``, ``expected``, ``reply``, ``correct``) with the wrong ones first.

    The misses are what a learner should read: a phrasing the model did not connect to the fact, or a question
    that could mean two things. The order within the right and the wrong ones is the test file's.
    """
    frame = pd.DataFrame(
        [
            {"question": a["question"], "expected": a["expected"], "answer": a["reply"], "right": bool(a["correct"])}
            for a in answers
        ],
        columns=["question", "expected", "answer", "right"],
    )
    return frame.sort_values("right", kind="stable").reset_index(drop=True)


# How a probe question fared from the base model to the tuned one, in the order a table shows them.
CHANGES = ("forgotten", "learned", "kept", "wrong both times")


def probe_changes(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The general probe question by question: what the fine-tune made the model forget, learn and keep.

    ``before`` and ``after`` are the probe's rows for the base and the tuned model (``question``, ``reply``,
    ``correct``), asked in the same order. Forgotten (right before, wrong after) comes first.
    """
    if [a["question"] for a in before] != [a["question"] for a in after]:
        raise ValueError("The two probe runs asked different questions: score both models with the same probe.")
    rows = []
    for old, new in zip(before, after, strict=True):
        was, now = bool(old["correct"]), bool(new["correct"])
        change = CHANGES[0] if was and not now else CHANGES[1] if now and not was else CHANGES[2] if now else CHANGES[3]
        rows.append(
            {
                "question": old["question"],
                "expected": old.get("expected", ""),
                "change": change,
                "base answer": old["reply"],
                "tuned answer": new["reply"],
            }
        )
    frame = pd.DataFrame(rows, columns=["question", "expected", "change", "base answer", "tuned answer"])
    frame["change"] = pd.Categorical(frame["change"], categories=CHANGES, ordered=True)
    return frame.sort_values("change", kind="stable").reset_index(drop=True)


def change_counts(changes: pd.DataFrame) -> pd.DataFrame:
    """How many probe questions each kind of change holds (every kind listed, none too)."""
    counts = changes["change"].value_counts()
    return table([(change, int(counts.get(change, 0))) for change in CHANGES], ["change", "questions"])


def render_chat_template(template: str, messages: Sequence[dict[str, str]], eos_token: str = "<|endoftext|>") -> str:
    """A conversation as a model with ``template`` reads it: the chat template applied, from its text alone.

    No tokenizer or weights are needed (transformers' own Jinja renderer, the one ``apply_chat_template`` uses), so
    any model family's template can be shown offline. ``eos_token`` is what the template writes at a row's end.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([list(messages)], chat_template=template, eos_token=eos_token)
    return rendered[0]
