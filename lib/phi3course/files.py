"""Atomic file writes: a reader never sees half a file, and a failed write leaves the old one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int | None = None) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write one line per item (each ends with a newline), atomically."""
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


class DamagedFileError(ValueError):
    """A JSON file the course keeps is not what it wrote (cut short, edited, or not JSON): the message names the
    file and what to do."""


def read_json(path: str | os.PathLike[str], default: Any = None, expect: type | None = None, fix: str = "") -> Any:
    """The JSON in ``path`` (``default`` if there is no such file).

    A file that is not valid JSON (or, with ``expect``, not of that type) raises :class:`DamagedFileError`
    naming the file, what is wrong and ``fix`` (what to do), instead of a bare parser error.
    """
    target = Path(path)
    if not target.exists():
        return default
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problem = f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start})"
    else:
        if expect is None or isinstance(data, expect):
            return data
        problem = f"a JSON {type(data).__name__}, not the {expect.__name__} it should hold"
    action = fix or f"fix it in an editor, or move it aside (mv {target} {target}.damaged) and make it again"
    raise DamagedFileError(f"{target} is damaged: {problem}. {action}.")
