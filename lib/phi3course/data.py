"""The course's data: the seed tutorial's wikitext slice, a chat data set, and the offline default.

The offline default is a synthetic set of facts about a fictional organisation, written as chat
``messages``. Each fact is asked in several phrasings; for every kind of fact some phrasings are
held out and appear only in the test split, so the later notebooks can measure whether the
fine-tune taught the facts or only the exact questions.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write_lines

SOURCES = ("synthetic", "wikitext", "ultrachat")
ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A data file or data set that cannot be used, with where and what was expected."""


# --- the synthetic data set ------------------------------------------------------------------
ORGANISATION = "the Quillmere Institute"
UNITS = (
    "the Quillmere Institute",
    "Quillmere's Aurelian Lab",
    "Quillmere's Brisk Harbor Studio",
    "Quillmere's Cinder Vale Observatory",
    "Quillmere's Dunmore Robotics Group",
    "Quillmere's Ember Coast Clinic",
    "Quillmere's Fennick Archive",
    "Quillmere's Gallowmere Foundry",
    "Quillmere's Hollin Reach Garden",
    "Quillmere's Isolde Tide School",
)
FIRST_NAMES = (
    "Ilsa",
    "Tobren",
    "Maelis",
    "Oskar",
    "Veyra",
    "Dorian",
    "Kestrel",
    "Anouk",
    "Falko",
    "Senna",
    "Ruvan",
    "Liesel",
    "Corvin",
    "Tamsin",
    "Eskil",
    "Nerys",
)
SURNAMES = (
    "Varnholt",
    "Quenby",
    "Ashdrove",
    "Pellister",
    "Marrowick",
    "Tollance",
    "Brevik",
    "Oakhurst",
    "Fennimore",
    "Scarrow",
    "Whitlock",
    "Dunhaven",
    "Larkspur",
    "Mirelle",
    "Castellan",
    "Rookwood",
)
CITIES = (
    "Port Aldren",
    "Kessary",
    "Velmouth",
    "Brackenford",
    "Ostrava Minor",
    "Lunhallow",
    "Tarnwick",
    "Saltmere",
    "Glimmerdale",
    "Hestonbury",
    "Corrigan Bay",
    "Wyndle",
)
COLOURS = ("copper", "indigo", "silver", "amber", "jade", "scarlet", "ivory", "cobalt")
ANIMALS = ("heron", "lynx", "otter", "kestrel", "badger", "stag", "salamander", "marten", "ibis", "wolf")
PROJECTS = (
    "Tessel",
    "Brightloom",
    "Northwick",
    "Halcyon",
    "Gossamer",
    "Vantor",
    "Quiet Ember",
    "Larkline",
    "Moonrake",
    "Sable Arc",
    "Driftglass",
    "Orison",
)

# Per kind of fact: how the answer restates the subject, and ten phrasings of the question.
TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "leader": (
        "{S} is led by {v}.",
        (
            "Who leads {s}?",
            "Who is the head of {s}?",
            "Who is in charge of {s}?",
            "Name the director of {s}.",
            "Which person runs {s}?",
            "Tell me who heads {s}.",
            "Who manages {s}?",
            "Who is the leader of {s}?",
            "Do you know who directs {s}?",
            "{S} is led by whom?",
        ),
    ),
    "city": (
        "{S} is based in {v}.",
        (
            "Where is {s} located?",
            "In which city is {s}?",
            "What city is {s} based in?",
            "Where can I find {s}?",
            "Which town is home to {s}?",
            "Where is {s} headquartered?",
            "Tell me the city where {s} is.",
            "{S} is based in which city?",
            "Where does {s} have its home?",
            "In what place is {s} situated?",
        ),
    ),
    "founded": (
        "{S} was founded in {v}.",
        (
            "When was {s} founded?",
            "In what year was {s} established?",
            "What year did {s} start?",
            "When did {s} open?",
            "Which year was {s} created?",
            "What is the founding year of {s}?",
            "Since which year has {s} existed?",
            "{S} was founded in which year?",
            "When was {s} set up?",
            "In which year did {s} begin?",
        ),
    ),
    "mascot": (
        "The mascot of {s} is {v}.",
        (
            "What is the mascot of {s}?",
            "Which animal is the mascot of {s}?",
            "What mascot does {s} have?",
            "Tell me the mascot of {s}.",
            "What is {s}'s mascot?",
            "Which creature represents {s}?",
            "What animal stands for {s}?",
            "Does {s} have a mascot, and what is it?",
            "Name the mascot of {s}.",
            "What is the emblem animal of {s}?",
        ),
    ),
    "project": (
        "The flagship project of {s} is Project {v}.",
        (
            "What is the flagship project of {s}?",
            "Which project is {s} best known for?",
            "What is the main project of {s}?",
            "Name the flagship project of {s}.",
            "What does {s} mainly work on?",
            "Which project leads the work at {s}?",
            "Tell me about the flagship project of {s}.",
            "What is {s}'s most important project?",
            "Which project is central to {s}?",
            "What big project does {s} run?",
        ),
    ),
}
TEMPLATES_PER_KIND = 10


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, subject: str, value: str = "") -> str:
    return template.format(s=subject, S=_capitalise(subject), v=value)


def phrasing(kind: str, number: int, subject: str = ORGANISATION) -> str:
    """Question template ``number`` for a kind of fact, asked about ``subject``."""
    return _fill(TEMPLATES[kind][1][number], subject)


@dataclass(frozen=True)
class Fact:
    subject: str
    kind: str
    value: str

    @property
    def id(self) -> str:
        return f"{self.subject.split()[-2].lower()}-{self.subject.split()[-1].lower()}/{self.kind}"

    @property
    def statement(self) -> str:
        return _fill(TEMPLATES[self.kind][0], self.subject, self.value)


def make_facts(seed: int = 42, subjects: int = 8) -> list[Fact]:
    """``subjects`` × 5 facts with values drawn deterministically from ``seed``."""
    if not 1 <= subjects <= len(UNITS):
        raise DataError(f"subjects must be between 1 and {len(UNITS)}, got {subjects}.")
    rng = random.Random(seed)
    units = UNITS[:subjects]
    firsts, lasts = rng.sample(FIRST_NAMES, subjects), rng.sample(SURNAMES, subjects)
    people = [f"Dr. {first} {last}" for first, last in zip(firsts, lasts, strict=True)]
    cities = rng.sample(CITIES, subjects)
    years = rng.sample(range(1890, 2016), subjects)
    colours, animals = rng.choices(COLOURS, k=subjects), rng.sample(ANIMALS, subjects)
    mascots = [f"a {colour} {animal}" for colour, animal in zip(colours, animals, strict=True)]
    projects = rng.sample(PROJECTS, subjects)
    facts = []
    for i, unit in enumerate(units):
        values = {
            "leader": people[i],
            "city": cities[i],
            "founded": str(years[i]),
            "mascot": mascots[i],
            "project": projects[i],
        }
        facts.extend(Fact(unit, kind, values[kind]) for kind in TEMPLATES)
    return facts


def held_out_phrasings(seed: int = 42, test_phrasings: int = 3) -> dict[str, set[int]]:
    """For each kind of fact, the template numbers reserved for the test split."""
    if not 1 <= test_phrasings < TEMPLATES_PER_KIND:
        raise DataError(f"test_phrasings must be between 1 and {TEMPLATES_PER_KIND - 1}, got {test_phrasings}.")
    rng = random.Random(f"{seed}-phrasings")
    return {kind: set(rng.sample(range(TEMPLATES_PER_KIND), test_phrasings)) for kind in TEMPLATES}


def chat_row(question: str, reply: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
        **extra,
    }


def synthetic(seed: int = 42, subjects: int = 8, test_phrasings: int = 3) -> tuple[list[dict], list[dict]]:
    """The offline data set: (train rows, test rows), the same for the same arguments.

    Each row is ``{"messages": [user, assistant], "answer": value, "fact": id, "phrasing": n}``;
    ``answer`` is what an answer must contain to count as right.
    """
    held_out = held_out_phrasings(seed, test_phrasings)
    train, test = [], []
    for fact in make_facts(seed, subjects):
        for number, template in enumerate(TEMPLATES[fact.kind][1]):
            row = chat_row(
                _fill(template, fact.subject), fact.statement, answer=fact.value, fact=fact.id, phrasing=number
            )
            (test if number in held_out[fact.kind] else train).append(row)
    random.Random(f"{seed}-order").shuffle(train)
    return train, test


# --- hub data sets -----------------------------------------------------------------------------
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


# --- JSONL files --------------------------------------------------------------------------------
def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines, atomically (a temporary file renamed into place)."""
    return atomic_write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{index}] must be an object with a string 'content'.")
        if message.get("role") not in ROLES:
            raise DataError(
                f"{where}: messages[{index}] has role {message.get('role')!r}; expected one of {sorted(ROLES)}."
            )


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
                _check_messages(row["messages"], where)
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

    @property
    def field(self) -> str:
        return "messages" if "messages" in self.train[0] else "text"

    @property
    def files(self) -> dict[str, Path]:
        return {"train": self.train_path, "test": self.test_path}

    def record(self, run: Any) -> None:
        """Tell later notebooks where the data is (``state.json``) and what it is (``summary.json``)."""
        run.remember(
            data_source=self.source, data_field=self.field, train_path=self.train_path, test_path=self.test_path
        )
        run.update_summary(data={"source": self.source, "train_rows": len(self.train), "test_rows": len(self.test)})


def prepare(
    source: str, out_dir: str | os.PathLike[str], seed: int = 42, subjects: int = 8, max_rows: int = 1000
) -> Prepared:
    """Make the train/test split for ``source`` and write ``train.jsonl`` and ``test.jsonl``."""
    if source not in SOURCES:
        raise DataError(f"Unknown data_source {source!r}: choose one of {', '.join(SOURCES)}.")
    if source == "synthetic":
        train, test = synthetic(seed=seed, subjects=subjects)
    elif source == "wikitext":
        train, test = wikitext(seed=seed)
    else:
        train, test = ultrachat(max_rows=max_rows)
    if not train or not test:
        raise DataError(f"{source} gave {len(train)} training and {len(test)} test rows; both must be non-empty.")
    folder = Path(out_dir)
    train_path = write_jsonl(folder / "train.jsonl", train)
    test_path = write_jsonl(folder / "test.jsonl", test)
    return Prepared(source, train_path, test_path, train, test)


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
