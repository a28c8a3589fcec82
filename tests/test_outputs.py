"""What a learner sees in 02–05, compared with what the course expects them to see.

nbval (``--nbval-lax``) executes every notebook but compares no output of 02–05: their numbers, replies and timings
vary from run to run. The outputs a learner relies on are compared here instead, from what nbval's run recorded
(``nbval-outputs.jsonl``, written by tests/nbval_outputs.py), reduced to what does not vary:

- every table a notebook shows (a pandas DataFrame): its index name, its columns, its row labels, and what kind of
  value each cell holds (``<n>``, ``<n>%``, ``<bool>``, ``<text>``) — 02's before/after scores, 05's comparison;
- the printed lines a learner reads a result from: HTTP status lines (03's bad requests, 04's served flow), the
  questions and the shape of the answers (``A: <reply>``), score lines (numbers as ``<n>``), exercise checks.

Everything passes through tests/nbval_sanitize.cfg (paths, ports, timings, keys) as nbval's own comparisons do. The
expected views are files, one per notebook and profile, under tests/expected_outputs/<profile>/, so a change to what
the learner sees shows up as a diff. ``make test`` runs this after nbval over its run directory
(``COURSE_OUTPUTS_RUN_DIR=runs/nbval``), and again after the Azure dry run. After an intended change, write the
files again from those runs and read the diff before committing it::

    python -m tests.test_outputs runs/nbval runs/nbval-azureml
"""

from __future__ import annotations

import configparser
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from phi3course.paths import course_notebooks
from phi3course.rundir import RunDir
from tests.nbval_outputs import FILE_NAME

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "expected_outputs"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
NOTEBOOKS = [p.stem for p in course_notebooks() if p.stem[:2] in {"02", "03", "04", "05"}]
RUN_DIR_ENV = "COURSE_OUTPUTS_RUN_DIR"
WRITE = "python -m tests.test_outputs runs/nbval runs/nbval-azureml"


# --- sanitizing ----------------------------------------------------------------------------------------------
def nbval_sanitizers() -> list[tuple[re.Pattern[str], str]]:
    """tests/nbval_sanitize.cfg's regex/replace pairs, the ones nbval applies to the outputs it compares."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(SANITIZE, encoding="utf-8")
    return [(re.compile(config[name]["regex"]), config[name]["replace"]) for name in config.sections()]


SANITIZERS = nbval_sanitizers()
NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?(e[+-]?\d+)?")


def sanitize(text: str) -> str:
    for pattern, replace in SANITIZERS:
        text = pattern.sub(replace, text)
    return text


def kind(value: str) -> str:
    """What a table cell holds, not its value: ``<n>``, ``<n>%``, ``<bool>``, ``<text>`` or nothing."""
    value = value.strip()
    if not value:
        return ""
    if value in {"True", "False"}:
        return "<bool>"
    if NUMBER.fullmatch(value):
        return "<n>"
    if value.endswith("%") and NUMBER.fullmatch(value[:-1].strip()):
        return "<n>%"
    if value.lower() in {"nan", "none", "inf", "-inf"}:
        return value
    return "<text>"


# --- tables ---------------------------------------------------------------------------------------------------
class _Table(HTMLParser):
    """The header rows and body rows of a DataFrame's HTML, each a list of (tag, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.head: list[list[tuple[str, str]]] = []
        self.body: list[list[tuple[str, str]]] = []
        self._section: list[list[tuple[str, str]]] | None = None
        self._cell: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"thead", "tbody"}:
            self._section = self.head if tag == "thead" else self.body
        elif tag == "tr" and self._section is not None:
            self._section.append([])
        elif tag in {"th", "td"} and self._section is not None:
            self._cell = (tag, [])

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in {"th", "td"} and self._cell is not None and self._section:
            self._section[-1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag in {"thead", "tbody"}:
            self._section = None


def table_view(html: str) -> list[str]:
    """A DataFrame's HTML as lines: ``table [index]: column | column``, then ``  label: kind | kind`` per row."""
    parsed = _Table()
    parsed.feed(html)
    columns = [text for _, text in parsed.head[0][1:]] if parsed.head else []
    index = parsed.head[1][0][1] if len(parsed.head) > 1 else ""  # pandas puts the index's name on a second row
    lines = [f"table [{index}]: " + " | ".join(columns)]  # names the code gives, kept as they are ("p50 ms")
    for row in parsed.body:
        labels = [sanitize(text) for tag, text in row if tag == "th"]
        values = [kind(text) for tag, text in row if tag == "td"]
        lines.append(f"  {' / '.join(labels)}: " + " | ".join(values))
    return [line.rstrip() for line in lines]


# --- printed lines ----------------------------------------------------------------------------------------------
def _numbers(line: str) -> str:
    return re.sub(r"(?<![\w.])" + NUMBER.pattern + r"(?![\w.])", "<n>", line)  # not in 127.0.0.1 or 01.1


QUESTION = re.compile(r"^(Q|you):\s")
ANSWER = re.compile(r"^((A|model):\s*)(\S?)")  # right after a question line: its answer (or nothing)

# What a learner reads a result from, each line kind with how it is reduced. A printed line matching none is left
# out (model replies over several lines, configuration dumps, progress): a kept line that changes is the diff.
KEPT_LINES: list[tuple[re.Pattern[str], Callable[[str], str]]] = [
    (re.compile(r"^[✓✗] \d\d\.\d+ "), lambda line: line),  # an exercise's check
    (re.compile(r"→ [45]\d\d\b"), lambda line: line),  # a refused request: its status and the endpoint's message
    (re.compile(r"→ 2\d\d\b"), lambda line: re.sub(r"^(.*→ 2\d\d ).*$", r"\1<reply>", line)),  # an answer: its shape
    (re.compile(r"^\d{3} \S"), lambda line: line),  # a status, then the question asked
    (QUESTION, lambda line: line),
    (re.compile(r"held-out facts|general knowledge|exact-match|contains-answer"), _numbers),  # a score
    (re.compile(r"^the session holds \d+ messages"), _numbers),  # 05: the conversation the agent keeps
]


def printed_view(text: str) -> list[str]:
    kept: list[str] = []
    previous = ""
    for line in sanitize(text).splitlines():
        line = line.rstrip()
        answer = ANSWER.match(line) if QUESTION.match(previous) else None
        if answer:
            kept.append(answer[1] + "<reply>" if answer[3] else line)  # an empty answer stays as it is
        else:
            kept += [reduce(line) for pattern, reduce in KEPT_LINES if pattern.search(line)][:1]
        previous = line
    return kept


# --- a notebook's view ------------------------------------------------------------------------------------------
def output_view(output: dict[str, Any]) -> list[str]:
    output_type = output.get("output_type")
    if output_type == "stream" and output.get("name") == "stdout":
        return printed_view(output.get("text", ""))
    if output_type in {"execute_result", "display_data"}:
        html = output.get("data", {}).get("text/html", "")
        if 'class="dataframe"' in html:
            return table_view(html)
    if output_type == "error":
        return [f"error: {output.get('ename')}"]
    return []


def notebook_view(cells: Iterable[list[dict[str, Any]]]) -> list[str]:
    """What a learner relies on in one notebook's outputs (cells in order), one line each."""
    return [line for outputs in cells for output in outputs for line in output_view(output)]


def recorded_cells(run_path: Path) -> dict[str, list[list[dict[str, Any]]]]:
    """Each notebook's cells' outputs from the run's ``nbval-outputs.jsonl``, by notebook name.

    The first run of a notebook in the file counts: ``make test`` appends the solved notebooks' run to it.
    """
    path = run_path / FILE_NAME
    assert path.is_file(), f"no {path}: run nbval with -p tests.nbval_outputs, as make test does"
    files: dict[str, str] = {}
    cells: dict[str, list[list[dict[str, Any]]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        file = record["cell"].split("::")[0]
        name = Path(file).stem
        if files.setdefault(name, file) == file:
            cells.setdefault(name, []).append(record["outputs"])
    return cells


def expected_path(profile: str, notebook: str) -> Path:
    return EXPECTED / profile / f"{notebook}.txt"


def header(profile: str, notebook: str) -> list[str]:
    return [
        f"# What a learner sees in {notebook} under the {profile} profile (tests/test_outputs.py compares it).",
        f"# Written by `{WRITE}`: after an intended change, write it again and read the diff.",
    ]


def run_profile(run_path: Path) -> str:
    profile = RunDir(run_path).summary.get("profile")
    assert profile, f"{run_path}/summary.json names no profile: no notebook ran there"
    return str(profile)


def write(run_paths: Iterable[Path]) -> list[Path]:
    """The expected views, written again from these runs' outputs."""
    written = []
    for run_path in run_paths:
        profile, cells = run_profile(run_path), recorded_cells(run_path)
        for notebook in NOTEBOOKS:
            if notebook not in cells:
                raise SystemExit(f"{run_path}/{FILE_NAME} has no outputs of {notebook}: did nbval run it there?")
            target = expected_path(profile, notebook)
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = [*header(profile, notebook), *notebook_view(cells[notebook])]
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            written.append(target)
    return written


# --- tests ------------------------------------------------------------------------------------------------------
def frame_output(frame: Any) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/html": frame._repr_html_()}}


def results_frame(columns: list[str]) -> Any:
    import pandas as pd

    scores = {"held-out facts": [0.0, 0.75], "general knowledge": [0.5, 0.5], "perplexity": [800.1, 12.3]}
    return pd.DataFrame({c: scores[c] for c in columns}, index=["base", "tuned"])


def test_a_table_is_its_columns_row_labels_and_kinds_of_value() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"held-out exact-match": ["0.0%", "12.5%"], "answer": ["Dr. Oskar", ""], "correct": [True, False]},
        index=pd.Index(["Prompt flow (04)", "Agent Framework (05)"], name="path"),
    )
    assert output_view(frame_output(frame)) == [
        "table [path]: held-out exact-match | answer | correct",
        "  Prompt flow (04): <n>% | <text> | <bool>",
        "  Agent Framework (05): <n>% |  | <bool>",
    ]


def test_a_lost_column_or_a_500_for_a_400_changes_the_view() -> None:
    full = notebook_view([[frame_output(results_frame(["held-out facts", "general knowledge", "perplexity"]))]])
    assert full[1:] == ["  base: <n> | <n> | <n>", "  tuned: <n> | <n> | <n>"]
    assert notebook_view([[frame_output(results_frame(["held-out facts", "perplexity"]))]]) != full
    refused = "not JSON       → 400 the body is not valid JSON; send {'input_data': [...]}.\n"
    seen = notebook_view([[{"output_type": "stream", "name": "stdout", "text": refused}]])
    assert seen == [refused.strip()]
    assert notebook_view([[{"output_type": "stream", "name": "stdout", "text": refused.replace("400", "500")}]]) != seen


def test_what_varies_is_reduced_and_what_is_not_kept_is_left_out() -> None:
    printed = (
        "2026-12-03 12:11:01 +0000   10142 execution.flow     INFO     Start executing nodes\n"
        "Q: Who leads the Quillmere Institute?\nA: Aurelian Aurelian\nled is\n"
        "POST http://127.0.0.1:8123/score → 200 'Aurelian'\n"
        "tuned: Completed, held-out facts 0.250, general knowledge 1.000\n"
        "✗ 04.1 not yet — put any other text into wrong_key\n"
    )
    assert printed_view(printed) == [
        "Q: Who leads the Quillmere Institute?",
        "A: <reply>",
        "POST http://127.0.0.1:<port>/score → 200 <reply>",
        "tuned: Completed, held-out facts <n>, general knowledge <n>",
        "✗ 04.1 not yet — put any other text into wrong_key",
    ]
    assert printed_view("Q: Who?\nA:\n") == ["Q: Who?", "A:"], "an empty answer is not an answer's shape"
    assert printed_view("model: azureml:phi3-course:1\n") == [], "a line is an answer only after a question"


def outputs_run_path() -> Path:
    chosen = os.environ.get(RUN_DIR_ENV)
    if not chosen:
        pytest.skip(f"runs in `make test` after nbval, over its run directory ({RUN_DIR_ENV}=runs/nbval)")
    path = Path(chosen)
    return path if path.is_absolute() else ROOT / path  # relative to the course, as COURSE_RUN_DIR


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_what_the_learner_sees_is_what_the_course_expects(notebook: str) -> None:
    run_path = outputs_run_path()
    profile, cells = run_profile(run_path), recorded_cells(run_path)
    assert notebook in cells, f"{run_path}/{FILE_NAME} has no outputs of {notebook}: did nbval run it there?"
    expected = expected_path(profile, notebook)
    assert expected.is_file(), f"no {expected.relative_to(ROOT)}: write it with `{WRITE}` and commit it"
    wanted = [line for line in expected.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    seen = notebook_view(cells[notebook])
    diff = "\n".join(difflib.unified_diff(wanted, seen, str(expected.relative_to(ROOT)), "this run", lineterm=""))
    if seen != wanted:
        pytest.fail(
            f"what a learner sees in {notebook} changed:\n{diff}\nIntended? Write it again: `{WRITE}`", pytrace=False
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {WRITE}  (run directories of nbval runs with -p tests.nbval_outputs)")
    runs = [Path(a) if Path(a).is_absolute() else ROOT / a for a in sys.argv[1:]]
    for path in write(runs):
        print(path.relative_to(ROOT))
