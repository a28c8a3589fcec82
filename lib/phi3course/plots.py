"""The figures the notebooks show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_length_histogram(lengths: dict[str, Sequence[int]], title: str = "Tokens per row") -> Any:
    """One histogram per split, on shared bins; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    every = [n for values in lengths.values() for n in values]
    bins = min(40, max(5, len(set(every))))
    for label, values in lengths.items():
        ax.hist(values, bins=bins, range=(min(every), max(every) + 1), alpha=0.6, label=f"{label} ({len(values)})")
    ax.set(xlabel="tokens (with the chat template)", ylabel="rows", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curve(history: Sequence[dict[str, float]], title: str = "Training loss") -> Any:
    """Loss per step, with a moving average when there are enough points."""
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    losses = [row["loss"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, losses, alpha=0.45, label="loss per step")
    window = max(1, len(losses) // 10)
    if window > 1:
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, label=f"moving average ({window} steps)")
    ax.set(
        xlabel="step",
        ylabel="loss (answer tokens)",
        title=title,
        yscale="log" if min(losses, default=1) > 0 else "linear",
    )
    ax.legend()
    fig.tight_layout()
    return fig


def validation_curve(
    checks: Sequence[dict[str, Any]],
    target_facts: float,
    target_general: float,
    best_step: int | None = None,
    title: str = "Model selection on the validation split",
) -> Any:
    """The validation checks over the steps: facts right and the probe slice kept (as a share of the base model's,
    the check at step 0), each with its target as a dashed line and the kept step marked."""
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in checks]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, [row["facts"] for row in checks], "o-", color=MODEL_COLOURS["tuned"], label="validation facts right")
    ax.plot(
        steps, [row["general_vs_base"] for row in checks], "s-", color=OTHER_COLOURS[0], label="general kept (× base)"
    )
    ax.axhline(target_facts, ls="--", lw=1, color=MODEL_COLOURS["tuned"], label=f"facts target {target_facts:.0%}")
    ax.axhline(target_general, ls="--", lw=1, color=OTHER_COLOURS[0], label=f"general target {target_general:.2f} ×")
    if best_step is not None:
        ax.axvline(best_step, color="#555555", lw=1, alpha=0.6, label=f"kept: step {best_step}")
    ax.set(xlabel="step", ylabel="share", ylim=(0, 1.1), title=title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


# The same colour for the same model in every figure: grey the base, blue the tuned one, then the exercises' variants.
MODEL_COLOURS = {"base": "#999999", "tuned": "#2a7ab9"}
OTHER_COLOURS = ("#e08a2c", "#3a9b5c", "#b94a7a", "#7a5cb9")


def model_colours(labels: Sequence[str]) -> list[str]:
    """Each label's colour: base and tuned fixed, other labels from a palette in their order."""
    others = iter(OTHER_COLOURS * (1 + len(labels) // len(OTHER_COLOURS)))
    return [MODEL_COLOURS.get(label) or next(others) for label in labels]


def eval_bars(scores: dict[str, dict[str, float | None]], title: str = "Base vs fine-tuned") -> Any:
    """Contains-answer accuracy on the held-out facts and the general probe per model (left); answer perplexity
    (right, only where measured). Base first, then tuned, in the same colours as every figure of the course; a
    score that was not measured (``None``) gets no bar, rather than a bar at zero."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .display import SCORE_COLUMNS, score_order

    labels = score_order(scores)
    metrics = [("exact_match", "held-out facts"), ("general", "general knowledge")]
    metrics = [(key, name) for key, name in metrics if any(scores[k].get(key) is not None for k in labels)]
    with_ppl = any(scores[k].get("perplexity") is not None for k in labels)
    if with_ppl:
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), width_ratios=(3, 2))
    else:
        fig, left = plt.subplots(figsize=(5.5, 3.2))
    width = 0.8 / len(labels)
    at = np.arange(len(metrics))
    for index, (label, colour) in enumerate(zip(labels, model_colours(labels), strict=True)):
        measured = [(i, scores[label].get(key)) for i, (key, _) in enumerate(metrics)]
        measured = [(i, value) for i, value in measured if value is not None]
        if not measured:
            continue
        where = [at[i] + (index - (len(labels) - 1) / 2) * width for i, _ in measured]
        bars = left.bar(where, [value * 100 for _, value in measured], width, label=label, color=colour)
        left.bar_label(bars, fmt="%.0f%%", fontsize=8)
    left.set_xticks(at, [name for _, name in metrics])
    left.set(ylim=(0, 115), ylabel="answered right (%)", title="contains-answer accuracy")
    left.legend(loc="upper left", fontsize=8, ncols=len(labels))
    if with_ppl:
        shown = [label for label in labels if scores[label].get("perplexity") is not None]
        bars = right.bar(
            shown,
            [scores[k]["perplexity"] for k in shown],
            color=[model_colours(labels)[labels.index(k)] for k in shown],
        )
        right.bar_label(bars, fmt="%.2f")
        right.set(yscale="log", ylabel=SCORE_COLUMNS[2], title="perplexity (lower is better)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
