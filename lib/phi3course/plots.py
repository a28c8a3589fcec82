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


def eval_bars(scores: dict[str, dict[str, float | None]], title: str = "Base vs fine-tuned") -> Any:
    """Held-out exact-match and, where measured, the general-knowledge probe (left); answer perplexity (right)."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(scores)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    shown = [("exact_match", "held-out facts", "#2a7ab9")]
    if any(scores[k].get("general") is not None for k in labels):
        shown.append(("general", "general knowledge", "#e08a2c"))
    width = 0.8 / len(shown)
    at = np.arange(len(labels))
    for index, (key, name, colour) in enumerate(shown):
        values = [(scores[k].get(key) or 0.0) * 100 for k in labels]
        bars = left.bar(at + (index - (len(shown) - 1) / 2) * width, values, width, label=name, color=colour)
        left.bar_label(bars, fmt="%.0f%%", fontsize=8)
    left.set_xticks(at, labels)
    left.set(ylim=(0, 115), ylabel="answered right (%)", title="exact-match")
    if len(shown) > 1:
        left.legend(loc="upper left", fontsize=8, ncols=2)
    ppl = [scores[k].get("perplexity") or 0.0 for k in labels]
    bars = right.bar(labels, ppl, color=["#999999", "#2a7ab9"][: len(labels)])
    right.bar_label(bars, fmt="%.2f")
    right.set(yscale="log", ylabel="perplexity of the answers", title="perplexity (lower is better)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
