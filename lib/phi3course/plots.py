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
