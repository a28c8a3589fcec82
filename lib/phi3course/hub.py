"""Data sets from the Hugging Face hub: the original tutorial's wikitext slice and a chat data set (ultrachat).

Both need a reachable hub; offline, the course uses its synthetic set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .schema import DataError


def _from_hub(loader: Callable[[], Any], name: str) -> Any:
    try:
        return loader()
    except Exception as error:  # datasets raises several unrelated types when offline
        raise DataError(
            f"Could not load {name} from the Hugging Face hub ({type(error).__name__}: {error}). "
            "This needs a reachable hub (and HF_HUB_OFFLINE unset); offline, use data_source='synthetic'."
        ) from error


def wikitext(seed: int = 42, split: str = "train[:1%]", test_size: float = 0.2) -> tuple[list[dict], list[dict]]:
    """The seed tutorial's data: wikitext-2-v1 ``train[:1%]``, split 80/20, as ``{"text"}`` rows.

    Empty lines of the corpus (about a third of it) are dropped: they train nothing.
    """
    from datasets import load_dataset

    dataset = _from_hub(lambda: load_dataset("wikitext", "wikitext-2-v1", split=split), "wikitext-2-v1")
    dataset = dataset.filter(lambda row: bool(row["text"].strip()))
    parts = dataset.train_test_split(test_size=test_size, seed=seed)
    return [{"text": r["text"]} for r in parts["train"]], [{"text": r["text"]} for r in parts["test"]]


def ultrachat(max_rows: int = 1000) -> tuple[list[dict], list[dict]]:
    """A chat data set in ``messages`` form (PhiCookBook's later choice), the first ``max_rows`` rows."""
    from datasets import load_dataset

    name = "HuggingFaceH4/ultrachat_200k"
    train = _from_hub(lambda: load_dataset(name, split=f"train_sft[:{max_rows}]"), name)
    test = _from_hub(lambda: load_dataset(name, split=f"test_sft[:{max(1, max_rows // 4)}]"), name)
    return [{"messages": r["messages"]} for r in train], [{"messages": r["messages"]} for r in test]
