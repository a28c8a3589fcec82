"""Your own facts: a small YAML or CSV file read, checked and turned into chat rows of the synthetic set's shape.

``data_source="facts"`` reads it (see :func:`read_facts` and ``examples/my_facts.yaml``); each fact's
``test`` phrasings are held out of training, so the test measures whether the fact was learned.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .files import atomic_write_text
from .paths import course_root
from .schema import DataError, chat_row

FACT_FIELDS = {
    "question": "the question, as you would ask it (trained on)",
    "answer": "the short value a right reply must contain: a name, a number, a few words",
    "test": "one or two other ways to ask the question, held out of training (the test)",
    "reply": "optional: the sentence the model should answer with; it must contain the answer (without one, the course "
    "makes one from the question: 'Who founded X?' → '<answer> founded X.')",
    "train": "optional: more phrasings of the question to train on",
}
REQUIRED_FIELDS = ("question", "answer", "test")
MAX_ANSWER_WORDS = 12
CSV_SEPARATOR = "|"  # several phrasings in one CSV cell: "How old is it? | What is its age?"
MAX_FILE_BYTES = 1_000_000  # 1 MB: thousands of facts; the example's dozen is 4 kB
TEXT_FIELDS = ("question", "answer", "reply")  # one text each
LIST_FIELDS = ("test", "train")  # one text, or a list of texts

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
# The validation split's phrasings of a learner's fact: their question in wrappers training never uses. A facts file
# has no phrasings to spare (its test ones are the test), so validation asks the trained question in new surroundings:
# a check that the answer comes whatever is said around the question, weaker than the test's new wordings.
VALIDATION_TEMPLATES = (
    "Could you help me with this? {q}",
    "{q} I need it for a report.",
    "One more thing: {q}",
    "My colleague asked: {q}",
)


_BE = ("is", "are", "was", "were")
_DO = ("does", "do", "did")
_PREPOSITIONS = ("from", "to", "in", "at", "on", "with", "for", "by", "of")
_PLACED = ("based", "located", "situated", "found", "headquartered")


def _third_person(verb: str) -> str:
    """``build`` → ``builds``, ``teach`` → ``teaches``, ``carry`` → ``carries``, ``have`` → ``has``."""
    if verb == "have":
        return "has"
    if re.search(r"(s|sh|ch|x|z|o)$", verb):
        return verb + "es"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    return verb + "s"


_IRREGULAR_PAST = {
    "begin": "began",
    "build": "built",
    "buy": "bought",
    "choose": "chose",
    "come": "came",
    "draw": "drew",
    "give": "gave",
    "go": "went",
    "have": "had",
    "hold": "held",
    "keep": "kept",
    "leave": "left",
    "lose": "lost",
    "make": "made",
    "meet": "met",
    "run": "ran",
    "say": "said",
    "sell": "sold",
    "send": "sent",
    "ship": "shipped",
    "sing": "sang",
    "stop": "stopped",
    "take": "took",
    "teach": "taught",
    "win": "won",
    "write": "wrote",
}


def _past(verb: str) -> str:
    """``open`` → ``opened``, ``move`` → ``moved``, ``carry`` → ``carried``, ``build`` → ``built``."""
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ied"
    return verb + "ed"


def _subject_verb(words: list[str], auxiliary: str) -> list[str] | None:
    """ "X build" / "X ship from" after does/do/did → "X builds" / "X ships from" / "X shipped from"; None for a
    longer tail."""
    words = list(words)
    tail = [words.pop()] if len(words) > 2 and words[-1].lower() in _PREPOSITIONS else []
    if len(words) < 2:
        return None
    *subject, verb = words
    if not verb.isalpha() or verb[0].isupper():  # "Which festival does X hold every August": not a verb at the end
        return None
    if subject[0][:1].isupper() and any(word[:1].islower() for word in subject[1:]):
        return None  # "X hold every spring": a name, then more than its verb
    verb = {"does": _third_person(verb), "do": verb, "did": _past(verb)}[auxiliary]
    return [*subject, verb, *tail]


def _looks_like_verb(word: str) -> bool:
    """A lower-case word that reads as a verb in "Which river flows past X" / "Which firm built X"."""
    return word.isalpha() and word.islower() and word not in _BE + _DO and word.endswith(("s", "ed"))


def made_reply(question: str, answer: str) -> str | None:
    """A reply sentence that restates the question around the answer, for the common shapes of a question:
    "Who founded X?" → "A founded X.", "What is the motto of X?" → "The motto of X is A.", "When was X founded?" →
    "X was founded in A.", "What does X build?" → "X builds A.", "When did X open?" → "X opened in A.", "On which
    day is X closed?" → "X is closed on A.", "Which river flows past X?" → "A flows past X.". None for any other
    shape (the reply is then the answer alone)."""
    words = " ".join(question.split()).rstrip(" ?").split(" ")
    if len(words) < 3 or question.strip()[-1:] != "?" or {"you", "your", "i", "my", "me"} & {w.lower() for w in words}:
        return None  # not a question about a subject of its own
    first, second, rest = words[0].lower(), words[1].lower(), words[2:]
    made = None
    if first == "who" and second not in _DO:  # Who founded X → A founded X; Who is the head of X → A is the head of X
        made = [answer, *words[1:]]
    elif first in ("what", "which") and second in _BE:
        if rest[-1].lower() in ("called", "named"):  # What is X called → X is called A
            made = [*rest[:-1], second, rest[-1], answer]
        else:  # What is the motto of X → the motto of X is A
            made = [*rest, second, answer]
    elif first in ("what", "which") and len(words) > 3 and words[2].lower() in _BE:
        thing, be = words[3:], words[2].lower()  # What colour is X → X is A
        made = [*thing, be, answer]
        if thing[-1].lower() in ("called", "named"):  # What name is X called → X is called A
            made = [*thing[:-1], be, thing[-1], answer]
        elif thing[-1].lower() in _PREPOSITIONS and len(thing) > 1 and thing[-2][:1].isupper():
            made = [*thing[:-1], be, thing[-1], answer]  # Which town is X in → X is in A
        elif thing[-1].lower() in _PREPOSITIONS:  # Which cheese is X famous for → X is famous for A
            made = [*thing[:-2], be, *thing[-2:], answer] if len(thing) > 2 else None
    elif first in ("what", "which") and (does := next((i for i in (1, 2) if words[i].lower() in _DO), 0)):
        # What does X build → X builds A; Which port does X ship from → X ships from A
        said = _subject_verb(words[does + 1 :], words[does].lower())
        made = [*said, answer] if said else None
    elif first == "where" and second in _BE and rest:  # Where is X based → X is based in A; Where is X → X is in A
        placed = rest[-1].lower() in _PLACED
        made = [*(rest[:-1] if placed else rest), second, *([rest[-1]] if placed else []), "in", answer]
    elif first == "when" and second in _BE and len(rest) >= 2:  # When was X founded → X was founded in A
        made = [*rest[:-1], second, rest[-1], "in", answer]
    elif first == "when" and second == "did" and (said := _subject_verb(rest, "did")):
        made = [*said, "in", answer]  # When did X open → X opened in A
    elif first in _PREPOSITIONS and second in ("which", "what") and len(words) > 4 and words[3].lower() in _BE:
        # On which street is X → X is on A; On which day is X closed → X is closed on A
        subject, be = words[4:], words[3].lower()
        trailing = subject[-1].islower() and len(subject) > 1 and subject[-1].isalpha()
        made = [*subject[:-1], be, subject[-1]] if trailing else [*subject, be]
        made += [first, answer]
    elif first in _PREPOSITIONS and second in ("which", "what") and len(words) > 4 and words[3].lower() in _DO:
        said = _subject_verb(words[4:], words[3].lower())  # In which town does X live → X lives in A
        made = [*said, first, answer] if said and said[-1].lower() not in _PREPOSITIONS else None
    elif first in ("what", "which") and len(words) > 3 and words[1].islower() and _looks_like_verb(words[2]):
        made = [answer, *words[2:]]  # Which river flows past X → A flows past X
    elif first == "how" and second in ("many", "much") and len(rest) >= 2:
        if len(rest) >= 4 and rest[1].lower() in _DO:  # How many employees does X have → X has A employees
            said = _subject_verb(list(rest[2:]), rest[1].lower())
            made = [*said, answer, rest[0]] if said else None
        elif rest[1].lower() not in _BE:  # How many people work at X → A people work at X
            made = [answer, *rest]
    if not made:
        return None
    sentence = " ".join(made)
    return sentence[0].upper() + sentence[1:] + "."


@dataclass(frozen=True)
class MyFact:
    """One fact from a learner's file: the phrasings to train on, the ones held out, and the answer."""

    question: str
    answer: str
    reply: str
    test: tuple[str, ...]
    train: tuple[str, ...] = ()
    where: str = ""  # "my_facts.yaml, fact 3 (line 14)": how errors name it
    reply_made: bool = False  # the fact had no reply: the course made this one (made_reply), never written back

    @property
    def phrasings(self) -> tuple[str, ...]:
        """The learner's own training phrasings: the question first."""
        return (self.question, *self.train)

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {"question": self.question, "answer": self.answer}
        if not self.reply_made:
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


def _check_size(size: int, name: str) -> None:
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{name}: {size:,} bytes; a facts file may be at most 1 MB ({MAX_FILE_BYTES:,} bytes). A facts file holds "
            "a few dozen short facts (the example's twelve are 4 kB): keep the ones to teach, or split the file."
        )


def _not_text(where: str, key: str, value: Any) -> DataError:
    """The error for a field that is not text (a number or list typed in Python, a list or mapping in YAML)."""
    if key in LIST_FIELDS:
        fix = f"write '{key}' as one text or a list of texts, each phrasing a sentence of its own"
    else:
        fix = f'write the {key} as text, in quotes where it looks like a number or a list: "{value}"'
    return DataError(f"{where}: the {key} is {type(value).__name__} {value!r}, not text: {fix}.")


def _text(item: dict[str, Any], key: str, where: str) -> str:
    """A field as written, spaces collapsed; a missing or None field is empty text."""
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _not_text(where, key, value)
    return " ".join(value.split())


def _phrasings(value: Any, key: str = "test", where: str = "your fact") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(CSV_SEPARATOR) if part.strip()]
    if isinstance(value, list | tuple):
        if any(item is not None and not isinstance(item, str) for item in value):
            raise _not_text(where, key, value)
        return [item.strip() for item in value if item is not None and item.strip()]
    raise _not_text(where, key, value)


def _tag_as_written(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _facts_loader(name: str) -> type:
    """A YAML loader for facts files: every scalar is the text as written (no YAML 1.1 typing: ``no``,
    ``12:30``, ``0755``, ``1.50`` stay those strings), and tags, anchors, aliases and repeated keys are refused
    with the line and the fix."""
    import yaml

    class FactsLoader(yaml.SafeLoader):
        yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {}  # no implicit types: every plain scalar is str

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = f"*{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"&{event.anchor}"
                raise DataError(
                    f"{name}: line {line}: '{mark}' is a YAML anchor or alias, which a facts file does not allow (a "
                    "few of them can make a small file expand to megabytes). Write the text out in full where it "
                    "is needed."
                )
            tag = getattr(event, "tag", None)
            if tag is not None:
                raise DataError(
                    f"{name}: line {line}: the tag '{_tag_as_written(tag)}' is not allowed in a facts file: every "
                    f"value is read as the text you wrote. Remove '{_tag_as_written(tag)}' (put the value in quotes "
                    "if it holds ':' or '#')."
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, str) and key in first:
                    hint = (
                        " — several phrasings go in a list under 'train' or 'test', and each fact starts with its "
                        "own '- question:'"
                        if key in FACT_FIELDS
                        else ""
                    )
                    raise DataError(
                        f"{name}: line {line}: '{key}:' is given twice in one place (first on line {first[key]}), "
                        f"and only one would be kept. Keep one '{key}:'{hint}."
                    )
                if isinstance(key, str):
                    first[key] = line
            return super().construct_mapping(node, deep=deep)

    return FactsLoader


def _check_fact_node(node: Any, name: str) -> None:
    """Refuse a list or mapping where a fact's field must be text, naming its line."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return  # make_fact says what a fact must be
    for key_node, value in node.value:
        key = key_node.value
        if key in TEXT_FIELDS and not isinstance(value, yaml.ScalarNode):
            kind = "a list" if isinstance(value, yaml.SequenceNode) else "a mapping"
            raise DataError(
                f"{name}: line {value.start_mark.line + 1}: the {key} is {kind}, not text. Write one {key} as text "
                f"on the line of '{key}:' (in quotes if it holds ':' or '#'); more phrasings of a question go under "
                "'train' or 'test'."
            )
        if key in LIST_FIELDS:
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for part in items:
                if not isinstance(part, yaml.ScalarNode):
                    raise DataError(
                        f"{name}: line {part.start_mark.line + 1}: a phrasing under '{key}' is a list or a mapping, "
                        f"not text. Write one phrasing per line as '- phrasing' (in quotes if it holds ':' or '#')."
                    )


def _yaml_entries(text: str, name: str) -> list[tuple[str, Any]]:
    import yaml

    loader = _facts_loader(name)(text)
    try:
        root = loader.get_single_node()
        loaded = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(
            f"{name}:{where} is not valid YAML ({getattr(error, 'problem', error)}). Compare with "
            "examples/my_facts.yaml: each fact starts with '- question:', its keys line up under it, and a list "
            "has one phrasing per line ('- Name the mayor.'); in [brackets], quote phrasings with '?' or ':'."
        ) from None
    finally:
        loader.dispose()
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
        if number <= len(nodes):
            _check_fact_node(nodes[number - 1], name)
        entries.append((f"{name}, fact {number}{line}", item))
    return entries


def _csv_entries(text: str, name: str) -> list[tuple[str, Any]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    header = [column.strip() for column in reader.fieldnames or []]
    twice = next((column for number, column in enumerate(header) if column and column in header[:number]), None)
    if twice:
        raise DataError(
            f"{name}: line 1 names the column {twice!r} twice; only one would be kept. Keep one {twice!r} column: "
            f"several phrasings go in one cell separated by '{CSV_SEPARATOR}'."
        )
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
        if None in record:  # DictReader puts the cells past the header's columns under None
            raise DataError(
                f"{name}, line {reader.line_num}: more cells than the first line has columns ({len(header)}). Put "
                f"several phrasings in one cell separated by '{CSV_SEPARATOR}', and quote a cell that holds a comma: "
                '"About 8,400".'
            )
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
    question, answer = _text(item, "question", where), _text(item, "answer", where)
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
    own_reply = _text(item, "reply", where)
    reply = own_reply or made_reply(question, answer) or _default_reply(answer)
    if _normal(answer) not in _normal(reply):
        raise DataError(
            f"{where}: the reply {reply!r} does not contain the answer {answer!r}, so it could never count as "
            "right. Put the answer in the reply word for word (or leave 'reply' out)."
        )
    test = _phrasings(item["test"], "test", where)
    if not test:
        raise DataError(f"{where}: no test phrasing for {question!r}. Add under 'test' {FACT_FIELDS['test']}.")
    train = tuple(_phrasings(item.get("train"), "train", where))
    return MyFact(question, answer, reply, tuple(test), train, where, reply_made=not own_reply)


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
    _check_size(len(text) if isinstance(text, bytes) else len(text.encode("utf-8")), name)
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
    with target.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)  # never more than the limit, however large the file
    _check_size(max(len(raw), target.stat().st_size), str(target))
    return parse_facts(raw, str(target))


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


# Words that name a fact's relation, each with words a reader would use instead ("Who founded X?" and "Who started
# X?" ask the same). A model trained on one word of a group often fails the same question asked with another: it
# learns the words, not the relation. Groups are disjoint; every word of a group can stand for every other in a
# question, in the same grammatical form.
RELATION_WORDS: tuple[tuple[str, ...], ...] = (
    ("founded", "started", "established", "set up"),
    ("founder", "creator"),
    ("based", "located", "headquartered"),
    ("build", "make", "produce"),
    ("builds", "makes", "produces"),
    ("built", "made", "produced"),
    ("leads", "heads", "runs", "manages"),
    ("designed", "planned"),
    ("closed", "shut"),
    ("hold", "have", "keep"),
    ("chief", "head"),
    ("people", "employees", "staff members"),
    ("motto", "slogan"),
    ("colour", "color"),
    ("shipped", "sent"),
    ("company", "firm"),
    ("town", "city"),
    ("begin", "start"),
    ("called", "named"),
    ("biggest", "largest"),
    ("main", "most important"),
)


def reworded(question: str, limit: int = 6) -> list[str]:
    """Up to ``limit`` rewordings of ``question``: each relation word (:data:`RELATION_WORDS`) in it swapped for the
    others of its group, one swap at a time ("Who founded Velt Rivers?" → "Who started Velt Rivers?", …). A
    capitalised word inside the question is part of a name and stays."""
    made: list[str] = []
    for group in RELATION_WORDS:
        for word in group:
            pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
            # a capitalised match inside the question is part of a name ("Town Hall") and stays
            found = next(
                (m for m in pattern.finditer(question) if m.start() == 0 or not m.group(0)[:1].isupper()), None
            )
            if found is None:
                continue
            for other in group:
                if other == word:
                    continue
                swap = other[:1].upper() + other[1:] if found.group(0)[:1].isupper() else other
                made.append(question[: found.start()] + swap + question[found.end() :])
            break  # one word of a group is swapped, not two
    return list(dict.fromkeys(made))[:limit]


def templated_phrasings(fact: MyFact, count: int, offset: int = 0) -> list[str]:
    """``count`` extra training phrasings: :data:`QUESTION_TEMPLATES` around the learner's phrasings and their
    rewordings (:func:`reworded`), taken in turn."""
    made: list[str] = []
    own = [*fact.phrasings, *(w for q in fact.phrasings for w in reworded(q) if w not in fact.phrasings)]
    for step in range(count):
        template = QUESTION_TEMPLATES[(offset + step) % len(QUESTION_TEMPLATES)]
        question = own[step % len(own)]
        bare = question.rstrip("?!. ")
        made.append(template.format(q=question, bare=bare[:1].lower() + bare[1:]))
    return made


def split(
    facts: Sequence[MyFact], templates: int = 0, seed: int = 42
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Your facts as chat rows of the synthetic set's shape: (train rows, validation rows, test rows).

    Training asks each fact in your phrasings plus ``templates`` phrasings made from templates; the
    test asks it only in your held-out ``test`` phrasings; validation asks your question once more, in one of
    :data:`VALIDATION_TEMPLATES` (marked ``wrapped``: a weaker check than new wordings, since the question itself is
    trained on). ``phrasing`` numbers your phrasings first, then the test's, then the templated
    ones, then the validation one.
    """
    if not 0 <= templates <= 4 * len(QUESTION_TEMPLATES):
        raise DataError(f"facts_templates must be between 0 and {4 * len(QUESTION_TEMPLATES)}, got {templates}.")
    check_facts(facts)
    held_out = {_normal(text) for fact in facts for text in fact.test}
    train, validation, test = [], [], []
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
        asked = VALIDATION_TEMPLATES[index % len(VALIDATION_TEMPLATES)].format(q=fact.question)
        validation.append(chat_row(asked, fact.reply, **extra, phrasing=number, wrapped=True))
    random.Random(f"{seed}-order").shuffle(train)
    return train, validation, test


def splits(
    facts: Sequence[MyFact], templates: int = 0, seed: int = 42
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, test rows) of :func:`split`."""
    train, _, test = split(facts, templates, seed)
    return train, test


def facts_path(facts_file: str | os.PathLike[str]) -> Path:
    """A facts file as given, or relative to the course folder (so notebooks and papermill agree)."""
    path = Path(facts_file).expanduser()
    return path if path.is_absolute() else course_root() / path
