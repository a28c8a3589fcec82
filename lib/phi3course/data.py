"""The course's data: the seed tutorial's wikitext slice, a chat data set, the offline default, your facts.

The offline default is a synthetic set of facts about a fictional organisation, written as chat
``messages``. Each fact is asked in several phrasings; for every kind of fact some phrasings are
held out and appear only in the test split, so the later notebooks can measure whether the
fine-tune taught the facts or only the exact questions.

``data_source="facts"`` reads the learner's own facts from a small YAML or CSV file (see
:func:`read_facts` and ``examples/my_facts.yaml``) and makes rows of exactly the same shape.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write_lines, atomic_write_text
from .paths import course_root

SOURCES = ("synthetic", "facts", "wikitext", "ultrachat")
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


# --- your own facts ------------------------------------------------------------------------------
FACT_FIELDS = {
    "question": "the question, as you would ask it (trained on)",
    "answer": "the short value a right reply must contain: a name, a number, a few words",
    "test": "one or two other ways to ask the question, held out of training (the test)",
    "reply": "optional: the sentence the model should answer with; it must contain the answer",
    "train": "optional: more phrasings of the question to train on",
}
REQUIRED_FIELDS = ("question", "answer", "test")
MAX_ANSWER_WORDS = 12
CSV_SEPARATOR = "|"  # several phrasings in one CSV cell: "How old is it? | What is its age?"

# Wrappers around a learner's own question: cheap extra training phrasings (``facts_templates``).
# They change the words around the question, never the question's own wording.
QUESTION_TEMPLATES = (
    "Quick question: {q}",
    "{q} Please answer in one sentence.",
    "I was wondering: {q}",
    "Hi! {q}",
    "Can you tell me something? {q}",
    "{q} Thanks!",
    "Do you happen to know this? {q}",
    "{bare}",
    "Please answer briefly. {q}",
    "Tell me: {q}",
    "A friend asked me this and I did not know. {q}",
    "Question: {q}",
)


@dataclass(frozen=True)
class MyFact:
    """One fact from a learner's file: the phrasings to train on, the ones held out, and the answer."""

    question: str
    answer: str
    reply: str
    test: tuple[str, ...]
    train: tuple[str, ...] = ()
    where: str = ""  # "my_facts.yaml, fact 3 (line 14)": how errors name it

    @property
    def phrasings(self) -> tuple[str, ...]:
        """The learner's own training phrasings: the question first."""
        return (self.question, *self.train)

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if self.reply != _default_reply(self.answer):
            item["reply"] = self.reply
        if self.train:
            item["train"] = list(self.train)
        item["test"] = list(self.test)
        return item


def _normal(text: str) -> str:
    """A phrasing as compared for duplicates: case, spacing and punctuation ignored."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _default_reply(answer: str) -> str:
    return answer if answer.endswith((".", "!", "?")) else f"{answer}."


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{name}: line {line} is not UTF-8 text (byte 0x{raw[error.start]:02x}). Save the file as UTF-8 — "
            "in Excel 'Save As → CSV UTF-8', in an editor 'Save with Encoding → UTF-8' — and try again."
        ) from None


def _phrasings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(CSV_SEPARATOR) if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value if item is not None and str(item).strip()]
    return [str(value).strip()]


def _yaml_entries(text: str, name: str) -> list[tuple[str, Any]]:
    import yaml

    try:
        loaded = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(
            f"{name}:{where} is not valid YAML ({getattr(error, 'problem', error)}). Compare with "
            "examples/my_facts.yaml: each fact starts with '- question:', its keys line up under it, and a list "
            "has one phrasing per line ('- Name the mayor.'); in [brackets], quote phrasings with '?' or ':'."
        ) from None
    nodes: list[Any] = []
    if isinstance(loaded, dict) and "facts" in loaded:
        items = loaded["facts"]
        nodes = next((v.value for k, v in root.value if k.value == "facts" and hasattr(v, "value")), [])
    elif isinstance(loaded, list):
        items, nodes = loaded, root.value
    else:
        raise DataError(f"{name}: expected a list of facts under 'facts:' (see examples/my_facts.yaml).")
    if not isinstance(items, list) or not isinstance(nodes, list):
        raise DataError(f"{name}: 'facts:' must be a list, each item starting with '- question:'.")
    entries = []
    for number, item in enumerate(items, start=1):
        line = f" (line {nodes[number - 1].start_mark.line + 1})" if number <= len(nodes) else ""
        entries.append((f"{name}, fact {number}{line}", item))
    return entries


def _csv_entries(text: str, name: str) -> list[tuple[str, Any]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    header = [column.strip() for column in reader.fieldnames or []]
    missing = [column for column in REQUIRED_FIELDS if column not in header]
    if missing:
        raise DataError(
            f"{name}: no {', '.join(repr(m) for m in missing)} column (the first line has {header or 'nothing'}). "
            f"The first line must name the columns: {','.join(REQUIRED_FIELDS)} (reply and train are optional); "
            f"put several phrasings in one cell separated by '{CSV_SEPARATOR}'."
        )
    unknown = [column for column in header if column not in FACT_FIELDS]
    if unknown:
        raise DataError(f"{name}: unknown column {unknown[0]!r}; the columns are {', '.join(FACT_FIELDS)}.")
    entries = []
    for record in reader:
        values = {(k or "").strip(): v for k, v in record.items()}
        if not any((v or "").strip() for v in values.values() if isinstance(v, str)):
            continue  # a blank line
        entries.append((f"{name}, line {reader.line_num}", values))
    return entries


def make_fact(item: Any, where: str = "your fact") -> MyFact:
    """One fact from a mapping with the keys of :data:`FACT_FIELDS`; errors start with ``where``."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected the keys {', '.join(REQUIRED_FIELDS)}, got {type(item).__name__} {item!r}.")
    unknown = [key for key in item if key not in FACT_FIELDS]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}; a fact has {', '.join(FACT_FIELDS)}.")
    for key in REQUIRED_FIELDS:
        if key not in item:
            raise DataError(f"{where}: no '{key}'. Add '{key}:' — {FACT_FIELDS[key]}.")
    question = " ".join(str(item["question"] or "").split())
    answer = " ".join(str(item["answer"] if item["answer"] is not None else "").split())
    if not question:
        raise DataError(f"{where}: the question is empty. Write the question as someone would ask it.")
    if not answer:
        raise DataError(f"{where}: the answer to {question!r} is empty. Write {FACT_FIELDS['answer']}.")
    if len(answer.split()) > MAX_ANSWER_WORDS:
        raise DataError(
            f"{where}: the answer has {len(answer.split())} words; a reply counts as right when it contains the "
            f"answer word for word, so keep it short (at most {MAX_ANSWER_WORDS} words) and put the full sentence "
            "in 'reply'."
        )
    reply = " ".join(str(item.get("reply") or "").split()) or _default_reply(answer)
    if _normal(answer) not in _normal(reply):
        raise DataError(
            f"{where}: the reply {reply!r} does not contain the answer {answer!r}, so it could never count as "
            "right. Put the answer in the reply word for word (or leave 'reply' out)."
        )
    test = _phrasings(item["test"])
    if not test:
        raise DataError(f"{where}: no test phrasing for {question!r}. Add under 'test' {FACT_FIELDS['test']}.")
    return MyFact(question, answer, reply, tuple(test), tuple(_phrasings(item.get("train"))), where)


def _place(fact: MyFact) -> str:
    """Where a fact is, without its file's name (for a second mention in one message)."""
    return fact.where.rsplit(", ", 1)[-1]


def check_facts(facts: Sequence[MyFact]) -> list[MyFact]:
    """Refuse duplicates, and test phrasings that are also trained on, naming both places."""
    if not facts:
        raise DataError("no facts: add at least one (see examples/my_facts.yaml).")
    trained: dict[str, MyFact] = {}
    for fact in facts:
        for text in fact.phrasings:
            if (seen := trained.get(_normal(text))) is not None:
                who = "this fact" if seen is fact else _place(seen)
                raise DataError(
                    f"{fact.where}: the question {text!r} is asked twice (also in {who}). Merge the two facts into "
                    "one, or reword one of the questions."
                )
            trained[_normal(text)] = fact
    tested: dict[str, MyFact] = {}
    for fact in facts:
        for text in fact.test:
            if (seen := trained.get(_normal(text))) is not None:
                who = "one of its own training phrasings" if seen is fact else f"a training phrasing of {_place(seen)}"
                raise DataError(
                    f"{fact.where}: the test phrasing {text!r} is the same as {who}. A test phrasing must be worded "
                    "differently, or the test only measures recall of a question it was trained on: reword it."
                )
            if (seen := tested.get(_normal(text))) is not None:
                raise DataError(
                    f"{fact.where}: the test phrasing {text!r} is also a test phrasing of {_place(seen)}: reword one."
                )
            tested[_normal(text)] = fact
    return list(facts)


def parse_facts(text: str | bytes, name: str = "my_facts.yaml") -> list[MyFact]:
    """Facts from YAML or CSV text (``name``'s suffix says which); errors name the fact and the fix."""
    if isinstance(text, bytes):
        text = _decode(text, name)
    suffix = Path(name).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        entries = _yaml_entries(text, name)
    elif suffix == ".csv":
        entries = _csv_entries(text, name)
    else:
        raise DataError(f"{name}: facts come in a .yaml or a .csv file (see examples/my_facts.yaml).")
    return check_facts([make_fact(item, where) for where, item in entries])


def read_facts(path: str | os.PathLike[str]) -> list[MyFact]:
    """Read and check a facts file (YAML or CSV, UTF-8).

    YAML: ``facts:`` then one item per fact with ``question``, ``answer``, ``test`` (one or two
    phrasings held out for the test) and optionally ``reply`` and ``train`` (more phrasings to
    train on). CSV: the same names as columns, several phrasings in a cell separated by ``|``.
    """
    target = Path(path)
    if not target.is_file():
        raise DataError(f"{target}: no such file. Copy examples/my_facts.yaml and point facts_file at your copy.")
    return parse_facts(target.read_bytes(), str(target))


def facts_yaml(facts: Sequence[MyFact], about: str = "") -> str:
    """Facts as the YAML a learner would write (what the 01 form saves)."""
    import yaml

    body = yaml.safe_dump({"facts": [fact.to_dict() for fact in facts]}, sort_keys=False, allow_unicode=True)
    header = f"# {about}\n" if about else ""
    return header + body


def save_facts(facts: Sequence[MyFact], path: str | os.PathLike[str], about: str = "") -> Path:
    """Check the facts, then write them as YAML atomically (a bad set never replaces a good file)."""
    text = facts_yaml(check_facts(facts), about)
    parse_facts(text, Path(path).name)  # what is written reads back
    return atomic_write_text(path, text)


def add_fact(path: str | os.PathLike[str], item: dict[str, Any]) -> list[MyFact]:
    """Add one fact to a facts file (made if missing), checked with the others first; return them all."""
    target = Path(path)
    facts = read_facts(target) if target.is_file() else []
    facts.append(make_fact(item, f"new fact {len(facts) + 1}"))
    save_facts(facts, target, about="Facts typed into the form of 01_data.")
    return read_facts(target)


def templated_phrasings(fact: MyFact, count: int, offset: int = 0) -> list[str]:
    """``count`` extra training phrasings: :data:`QUESTION_TEMPLATES` around the learner's phrasings."""
    made: list[str] = []
    own = fact.phrasings
    for step in range(count):
        template = QUESTION_TEMPLATES[(offset + step) % len(QUESTION_TEMPLATES)]
        question = own[step % len(own)]
        bare = question.rstrip("?!. ")
        made.append(template.format(q=question, bare=bare[:1].lower() + bare[1:]))
    return made


def facts_rows(
    facts: Sequence[MyFact], templates: int = 0, seed: int = 42
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Your facts as chat rows of the synthetic set's shape: (train rows, test rows).

    Training asks each fact in your phrasings plus ``templates`` phrasings made from templates; the
    test asks it only in your held-out ``test`` phrasings. ``phrasing`` numbers your phrasings first,
    then the test's, then the templated ones.
    """
    if not 0 <= templates <= 4 * len(QUESTION_TEMPLATES):
        raise DataError(f"facts_templates must be between 0 and {4 * len(QUESTION_TEMPLATES)}, got {templates}.")
    check_facts(facts)
    held_out = {_normal(text) for fact in facts for text in fact.test}
    train, test = [], []
    for index, fact in enumerate(facts):
        fact_id = f"fact-{index + 1:02d}"
        extra = dict(answer=fact.answer, fact=fact_id)
        for number, question in enumerate(fact.phrasings):
            train.append(chat_row(question, fact.reply, **extra, phrasing=number))
        first_test = len(fact.phrasings)
        for number, question in enumerate(fact.test, start=first_test):
            test.append(chat_row(question, fact.reply, **extra, phrasing=number))
        number = first_test + len(fact.test)
        seen = set(fact.phrasings)
        for question in templated_phrasings(fact, templates, offset=index):
            if _normal(question) in held_out or question in seen:
                continue  # a template must never recreate a held-out question (in any case or punctuation)
            seen.add(question)
            train.append(chat_row(question, fact.reply, **extra, phrasing=number))
            number += 1
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

    @property
    def sha256(self) -> str:
        """One fingerprint of both files: a later notebook can tell that the data changed under the same paths."""
        import hashlib

        digest = hashlib.sha256()
        for path in (self.train_path, self.test_path):
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
            data_sha256=self.sha256,
            sample_question=self.sample_question,
        )
        run.update_summary(data={"source": self.source, "train_rows": len(self.train), "test_rows": len(self.test)})


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


def facts_path(facts_file: str | os.PathLike[str]) -> Path:
    """A facts file as given, or relative to the course folder (so notebooks and papermill agree)."""
    path = Path(facts_file).expanduser()
    return path if path.is_absolute() else course_root() / path


def write_splits(folder: Path, train: list[dict[str, Any]], test: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` together: both new files are complete before either replaces
    the old one, so a failure leaves the previous pair as it was."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = {
        name: write_jsonl(folder / f".{name}.jsonl.new", rows) for name, rows in (("train", train), ("test", test))
    }
    paths = {name: folder / f"{name}.jsonl" for name in staged}
    for name, path in staged.items():
        os.replace(path, paths[name])
    return paths["train"], paths["test"]


def prepare(
    source: str,
    out_dir: str | os.PathLike[str],
    seed: int = 42,
    subjects: int = 8,
    max_rows: int = 1000,
    facts_file: str | os.PathLike[str] = "examples/my_facts.yaml",
    facts_templates: int = 0,
) -> Prepared:
    """Make the train/test split for ``source`` and write ``train.jsonl`` and ``test.jsonl``.

    Everything is read and checked before anything is written: a bad facts file (or a hub that is
    not there) raises :class:`DataError` and leaves the files already in ``out_dir`` untouched.
    """
    if source not in SOURCES:
        raise DataError(f"Unknown data_source {source!r}: choose one of {', '.join(SOURCES)}.")
    if source == "synthetic":
        train, test = synthetic(seed=seed, subjects=subjects)
    elif source == "facts":
        train, test = facts_rows(read_facts(facts_path(facts_file)), templates=facts_templates, seed=seed)
    elif source == "wikitext":
        train, test = wikitext(seed=seed)
    else:
        train, test = ultrachat(max_rows=max_rows)
    if not train or not test:
        raise DataError(f"{source} gave {len(train)} training and {len(test)} test rows; both must be non-empty.")
    train_path, test_path = write_splits(Path(out_dir), train, test)
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
