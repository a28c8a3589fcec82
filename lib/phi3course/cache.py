"""What the base model answers, computed once and kept: greedy decoding of an unchanged model on unchanged
questions gives the same replies every run, so 02 (and the job, and the benchmarks) need not ask again.

An entry is keyed by everything that decides the answers: the model folder's files (the content of its small files,
the size and modification time of its weights: a reconverted or replaced model is a new key), the inputs the caller
names (the questions, the settings), the source of the functions that ask (the caller's, and the course's scoring
modules ``evaluate`` and ``probe``) and the torch and transformers versions. Change any of them and the answers are
computed again. A model that is not a folder on this machine (a hub id) is never cached: its files are not here to
fingerprint.

Entries are JSON files in ``<course cache>/answers``; delete the folder (or set ``COURSE_ANSWER_CACHE=0``) to ask
every time. A cache this account may only read (a workshop's shared ``COURSE_CACHE``) is read, and nothing is
written to it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .files import atomic_write_text
from .paths import cache_dir

T = TypeVar("T")

FOLDER = "answers"
WHOLE_FILE_BYTES = 32 * 2**20  # files up to this size are fingerprinted by their content


def answers_dir() -> Path:
    return cache_dir() / FOLDER


def enabled() -> bool:
    """False when ``COURSE_ANSWER_CACHE`` is 0/false/no: every answer is computed."""
    return os.environ.get("COURSE_ANSWER_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def model_fingerprint(folder: str | os.PathLike[str]) -> str | None:
    """A digest of the model folder's files (relative name, size; the content of files up to
    :data:`WHOLE_FILE_BYTES`, the modification time of larger ones); None when ``folder`` is not a folder on this
    machine (a hub id), so that nothing is cached for it."""
    root = Path(folder)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0".encode())
        if stat.st_size <= WHOLE_FILE_BYTES:  # config and tokenizer files: their content (they are rewritten as is)
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:  # weights: written once, when the model is converted or downloaded
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()


def _source(function: Callable[..., Any]) -> str:
    """A function's source (a notebook cell's too: IPython keeps the cells' text); raises when there is none."""
    function = getattr(function, "__func__", function)
    return inspect.getsource(function)


def _code_digest(code: Sequence[Callable[..., Any]]) -> str:
    from . import evaluate, probe

    digest = hashlib.sha256()
    for module in (evaluate, probe):  # the scoring every caller goes through
        digest.update(Path(module.__file__ or "").read_bytes())
    for function in code:
        digest.update(_source(function).encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def key(kind: str, model: str | os.PathLike[str], code: Sequence[Callable[..., Any]] = (), **inputs: Any) -> str | None:
    """The entry's name for these answers, or None when they cannot be cached (see :func:`remembered`)."""
    fingerprint = model_fingerprint(model)
    if fingerprint is None:
        return None
    try:
        code_digest = _code_digest(code)
    except (OSError, TypeError):  # a function without source (built in, or defined where no text is kept)
        return None
    described = {"kind": kind, "model": fingerprint, "code": code_digest, "versions": _versions(), "inputs": inputs}
    text = json.dumps(described, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def remembered(
    kind: str,
    compute: Callable[[], T],
    *,
    model: str | os.PathLike[str],
    code: Sequence[Callable[..., Any]] = (),
    say: bool = True,
    **inputs: Any,
) -> T:
    """``compute()``, or what it returned before for the same ``model`` folder, ``inputs``, ``code`` and versions.

    ``kind`` names the entry (``held-out``, ``replay``, ``validation``); ``code`` lists the functions ``compute``
    calls beyond the course's ``evaluate`` and ``probe`` modules (their source is part of the key, so an edited
    cell asks again); ``inputs`` is everything else the answers depend on (JSON-able: questions, settings). What
    ``compute`` returns must survive JSON (tuples come back as lists). With ``say``, a reused entry prints one line
    saying so."""
    name = key(kind, model, code, **inputs) if enabled() else None
    if name is None:
        return compute()
    path = answers_dir() / f"{name}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: computed again and rewritten
        stored = None
    if isinstance(stored, dict) and "value" in stored:
        if say:
            print(
                f"{kind}: the base model's answers from an earlier run (same model files, questions, settings and "
                f"code), kept in {answers_dir()}"
            )
        return stored["value"]  # type: ignore[no-any-return]
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"kind": kind, "value": value}))
    except OSError:  # a cache this account may only read (a workshop's shared one): the answers are still returned
        pass
    return value
