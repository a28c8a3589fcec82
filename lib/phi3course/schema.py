"""What a data row is, for every data module: a chat row (``messages``) or a text row (``text``), and the error
raised for a data file or data set that cannot be used."""

from __future__ import annotations

from typing import Any

ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A data file or data set that cannot be used, with where and what was expected."""


def chat_row(question: str, reply: str, **extra: Any) -> dict[str, Any]:
    """A two-turn chat row: the user's question and the assistant's reply, plus ``extra`` keys (``answer``, …)."""
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
        **extra,
    }


def check_messages(messages: Any, where: str) -> None:
    """Refuse a row's ``messages`` unless it is a non-empty list of ``{"role", "content"}`` objects; errors start with
    ``where``."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{index}] must be an object with a string 'content'.")
        if message.get("role") not in ROLES:
            raise DataError(
                f"{where}: messages[{index}] has role {message.get('role')!r}; expected one of {sorted(ROLES)}."
            )
