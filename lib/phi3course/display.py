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
