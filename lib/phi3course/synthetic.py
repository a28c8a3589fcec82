"""The course's offline data set: facts about a fictional organisation, the Quillmere Institute, as chat rows.

Each fact is asked in twelve phrasings; for every kind of fact some phrasings are held out and appear only in
the test split, so the later notebooks can measure whether the fine-tune taught the facts or only the
exact questions, and one more is kept for the validation split, which picks the model during training.
The same seed gives the same rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .schema import DataError, chat_row

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

# Per kind of fact: how the answer restates the subject, and twelve phrasings of the question.
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
            "Who is the director of {s}?",
            "Who holds the top job at {s}?",
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
            "Where is {s} based?",
            "In which town does {s} work?",
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
            "When did {s} come into being?",
            "What year was {s} founded in?",
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
            "Which animal does {s} use as its mascot?",
            "What creature is the mascot of {s}?",
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
            "What project is {s} famous for?",
            "Which project does {s} work on most?",
        ),
    ),
}
TEMPLATES_PER_KIND = 12


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
    mascots = [
        f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {animal}"
        for colour, animal in zip(colours, animals, strict=True)
    ]
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


def validation_phrasings(seed: int = 42, test_phrasings: int = 3, count: int = 1) -> dict[str, set[int]]:
    """For each kind of fact, ``count`` template numbers kept apart from training and from the test: the validation
    split, which 02 reads during training to pick its model (the test is read once, at the end)."""
    test = held_out_phrasings(seed, test_phrasings)
    left = TEMPLATES_PER_KIND - test_phrasings
    if not 0 <= count < left:
        raise DataError(
            f"validation_phrasings must be between 0 and {left - 1} with test_phrasings={test_phrasings} "
            f"(at least one of the {TEMPLATES_PER_KIND} phrasings of each fact must stay to train on), got {count}."
        )
    rng = random.Random(f"{seed}-validation")
    return {
        kind: set(rng.sample(sorted(set(range(TEMPLATES_PER_KIND)) - numbers), count)) for kind, numbers in test.items()
    }


def split(
    seed: int = 42, subjects: int = 8, test_phrasings: int = 3, validation_phrasings_per_fact: int = 1
) -> tuple[list[dict], list[dict], list[dict]]:
    """The offline data set: (train rows, validation rows, test rows), the same for the same arguments.

    Each row is ``{"messages": [user, assistant], "answer": value, "fact": id, "phrasing": n}``;
    ``answer`` is what an answer must contain to count as right. Every fact is asked in all three splits, each in
    phrasings of its own.
    """
    test_numbers = held_out_phrasings(seed, test_phrasings)
    validation_numbers = validation_phrasings(seed, test_phrasings, validation_phrasings_per_fact)
    train, validation, test = [], [], []
    for fact in make_facts(seed, subjects):
        for number, template in enumerate(TEMPLATES[fact.kind][1]):
            row = chat_row(
                _fill(template, fact.subject), fact.statement, answer=fact.value, fact=fact.id, phrasing=number
            )
            if number in test_numbers[fact.kind]:
                test.append(row)
            elif number in validation_numbers[fact.kind]:
                validation.append(row)
            else:
                train.append(row)
    random.Random(f"{seed}-order").shuffle(train)
    return train, validation, test


def splits(seed: int = 42, subjects: int = 8, test_phrasings: int = 3) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) of :func:`split`: the validation rows are in neither."""
    train, _, test = split(seed, subjects, test_phrasings)
    return train, test
