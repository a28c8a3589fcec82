"""The run's data files: ``train.jsonl`` and ``test.jsonl``, made by :func:`prepare` and read back checked.

:func:`prepare` makes the split of the chosen source — the offline synthetic set (:mod:`.synthetic`), your
own facts (:mod:`.facts`) or a hub data set (:mod:`.hub`) — and writes both files; :func:`read_jsonl`
checks every line of a data file before training trusts it. :func:`demo_question` and :func:`demo_turns`
are what the later notebooks ask the model about this run's data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import facts, hub, synthetic
from .files import atomic_write_lines
from .schema import DataError, check_messages

SOURCES = ("synthetic", "facts", "wikitext", "ultrachat")


# --- JSONL files --------------------------------------------------------------------------------
def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines, atomically (a temporary file renamed into place)."""
    return atomic_write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def read_jsonl(path: str | os.PathLike[str], field: str | None = None) -> list[dict[str, Any]]:
    """Read and check a JSON Lines data file.

    ``field`` is the key every row must have (``"messages"`` or ``"text"``); ``None`` accepts
    either. Any problem raises :class:`DataError` naming the file, the line and what was expected.
    """
    target = Path(path)
    expected = f"'{field}'" if field else "'messages' or 'text'"
    if not target.is_file():
        raise DataError(f"{target}: no such file. Run notebook 01_data (same profile and run_dir) to make it.")
    rows = []
    with target.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{target}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg}); expected one JSON object per line.") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with {expected}, got {type(row).__name__}.")
            keys = [field] if field else [k for k in ("messages", "text") if k in row]
            if not keys or keys[0] not in row:
                raise DataError(f"{where}: the row has no {expected} field (it has {sorted(row) or 'no fields'}).")
            if keys[0] == "messages":
                check_messages(row["messages"], where)
            elif not isinstance(row["text"], str):
                raise DataError(f"{where}: 'text' must be a string.")
            rows.append(row)
    if not rows:
        raise DataError(f"{target}: the file is empty; expected one JSON object with {expected} per line.")
    return rows


# --- one call for the notebook -------------------------------------------------------------------
@dataclass
class Prepared:
    source: str
    train_path: Path
    test_path: Path
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    # phrasings apart from both, which 02 reads while training to pick its model (none for text data)
    validation_path: Path | None = None
    validation: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def field(self) -> str:
        return "messages" if "messages" in self.train[0] else "text"

    @property
    def files(self) -> dict[str, Path]:
        found = {"train": self.train_path, "validation": self.validation_path, "test": self.test_path}
        return {name: path for name, path in found.items() if path is not None}

    @property
    def sha256(self) -> str:
        """One fingerprint of both files: a later notebook can tell that the data changed under the same paths."""
        import hashlib

        digest = hashlib.sha256()
        for path in self.files.values():
            digest.update(path.read_bytes())
        return digest.hexdigest()

    @property
    def sample_question(self) -> str | None:
        """A held-out question of this data (for a chat's first question); None for text data."""
        row = self.test[0]
        return row["messages"][0]["content"] if "messages" in row else None

    def record(self, run: Any) -> None:
        """Tell later notebooks where the data is (``state.json``) and what it is (``summary.json``)."""
        run.remember(
            data_source=self.source,
            data_field=self.field,
            train_path=self.train_path,
            test_path=self.test_path,
            validation_path=self.validation_path or "",
            data_sha256=self.sha256,
            sample_question=self.sample_question,
        )
        run.update_summary(
            data={
                "source": self.source,
                "train_rows": len(self.train),
                "validation_rows": len(self.validation),
                "test_rows": len(self.test),
            }
        )


DEMO_QUESTION = "Who leads the Quillmere Institute?"  # for text data (wikitext), which has no question of its own
FOLLOW_UPS = ("Where is it based?", "And what is its mascot?")  # the institute's chat goes on about the same subject


def demo_question(run: Any) -> str:
    """The question the notebooks ask to show the model: 01's sample held-out question of this run's data (the
    learner's own first fact with ``data_source="facts"``), or :data:`DEMO_QUESTION` for text data."""
    return run.get("sample_question") or DEMO_QUESTION


def demo_turns(run: Any, turns: int = 3) -> list[str]:
    """A scripted chat of ``turns`` questions: about the institute, the sample question and its follow-ups (the
    chat history makes "it" the institute); with other data, the first held-out questions about distinct facts."""
    first = demo_question(run)
    if run.get("data_source") == "synthetic":
        return [first, *FOLLOW_UPS][:turns]
    questions, facts = [first], set()
    for row in read_jsonl(test_path) if (test_path := run.get("test_path")) else []:
        question = row["messages"][0]["content"] if "messages" in row else None
        fact = row.get("fact", question)
        if question is None or fact in facts:
            continue
        facts.add(fact)
        if question != first:  # 01's sample question is the first row's: its fact is already asked
            questions.append(question)
    return questions[:turns]


def write_splits(
    folder: Path,
    train: list[dict[str, Any]],
    test: list[dict[str, Any]],
    validation: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path, Path | None]:
    """Write ``train.jsonl``, ``test.jsonl`` and (with rows) ``validation.jsonl`` together: every new file is complete
    before any replaces the old one, so a failure leaves the previous set as it was. A split without validation rows
    removes an old ``validation.jsonl``, which belonged to other data."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = [("train", train), ("test", test), *([("validation", validation)] if validation else [])]
    staged = {name: write_jsonl(folder / f".{name}.jsonl.new", rows) for name, rows in splits}
    paths = {name: folder / f"{name}.jsonl" for name in staged}
    for name, path in staged.items():
        os.replace(path, paths[name])
    if not validation:
        (folder / "validation.jsonl").unlink(missing_ok=True)
    return paths["train"], paths["test"], paths.get("validation")


def prepare(
    source: str,
    out_dir: str | os.PathLike[str],
    seed: int = 42,
    subjects: int = 8,
    max_rows: int = 1000,
    facts_file: str | os.PathLike[str] = "examples/my_facts.yaml",
    facts_templates: int = 0,
) -> Prepared:
    """Make the train/validation/test split for ``source`` and write ``train.jsonl``, ``validation.jsonl`` (chat data:
    phrasings apart from both others, for 02's model selection) and ``test.jsonl``.

    Everything is read and checked before anything is written: a bad facts file (or a hub that is
    not there) raises :class:`DataError` and leaves the files already in ``out_dir`` untouched.
    """
    if source not in SOURCES:
        raise DataError(f"Unknown data_source {source!r}: choose one of {', '.join(SOURCES)}.")
    validation: list[dict[str, Any]] = []
    if source == "synthetic":
        train, validation, test = synthetic.split(seed=seed, subjects=subjects)
    elif source == "facts":
        own = facts.read_facts(facts.facts_path(facts_file))
        train, validation, test = facts.split(own, templates=facts_templates, seed=seed)
    elif source == "wikitext":
        train, test = hub.wikitext(seed=seed)
    else:
        train, test = hub.ultrachat(max_rows=max_rows)
    if not train or not test:
        raise DataError(f"{source} gave {len(train)} training and {len(test)} test rows; both must be non-empty.")
    train_path, test_path, validation_path = write_splits(Path(out_dir), train, test, validation)
    return Prepared(source, train_path, test_path, train, test, validation_path, validation)


def token_lengths(rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Tokens per row as the model will see them (chat rows through its chat template)."""
    lengths = []
    for row in rows:
        if "messages" in row:
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            lengths.append(len(ids))
        else:
            lengths.append(len(tokenizer(row["text"])["input_ids"]))
    return lengths
