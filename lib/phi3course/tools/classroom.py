"""For educators: run every learner's notebooks headless, and collect their ``summary.json`` into one table.

    python -m phi3course.tools.classroom run --learners ana ben cleo --profile smoke [--to 02] [--notebooks-root DIR]
    python -m phi3course.tools.classroom collect runs/class [/home/*/phi3-course/runs/local ...] [--csv class.csv]
        [--since 2025-05-01T09:00] [--gradebook COURSE/gradebook.db]

``run`` executes the course once per learner with papermill (one after the other: the notebooks use fixed
ports and one Prompt flow connection name), each into ``runs/class/<learner>/``; with ``--notebooks-root``
it runs each learner's own copy of the notebooks from ``DIR/<learner>/``. A learner whose run fails does not
stop the others. ``collect`` accepts run directories, ``summary.json`` files or folders holding either, and
prints one row per learner: how far they got, where they are stuck, and what their model achieved. A summary
from a run that started before the class run (or ``--since``) is marked stale: that learner's newest run was
skipped or failed before it began, so its numbers are not theirs now. Learners' runs on other accounts can be
read when they set ``COURSE_SHARE_GROUP`` (see :func:`phi3course.rundir.share_with_group`). The CSV is escaped
against spreadsheet formulas: a text starting with ``=``, ``+``, ``-``, ``@``, a tab or a CR gets a leading ``'``.
With ``--gradebook``, the table also shows each learner's nbgrader grade (``nbgrader autograde``'s gradebook), so
one table holds how far each learner got and what their submitted exercises scored.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .. import profiles
from ..paths import runs_dir
from ..rundir import now

LEARNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

COLUMNS = [
    "learner",
    "profile",
    "model",
    "notebooks ok",
    "stuck at",
    "minutes",
    "train tokens/s",
    "final loss",
    "held-out base",
    "held-out tuned",
    "via flow",
    "endpoint p50 ms",
    "chat answer",
    "exercises",
    "grade",
]
HUB_ACCOUNT_PREFIX = "jupyter-"  # the course's hub runs learner <name> as account jupyter-<name> (hub/course_hub.py)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may take for a formula
UNREADABLE_HINT = (
    "the learner's run is not readable by you: have them set COURSE_SHARE_GROUP=<a group you are in> before "
    "they run the course (docs/workshop.md)"
)


def find_summaries(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``summary.json`` under the given files or folders, in a stable order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            found.append(path)
        elif (path / "summary.json").is_file():
            found.append(path / "summary.json")
        elif path.is_dir():
            found.extend(sorted(path.rglob("summary.json")))
        else:
            raise FileNotFoundError(f"{path} does not exist: give run directories, summary.json files or their folders")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(
            f"no summary.json under {', '.join(map(str, paths))}: a learner's run writes it to runs/<profile>/"
        )
    return unique


def learner_names(summaries: Sequence[Path]) -> list[str]:
    """Short names for the run directories: the parts of their paths that differ.

    ``/home/ana/course/runs/local`` and ``/home/ben/course/runs/local`` become ``ana`` and ``ben``;
    ``runs/class/ana`` becomes ``ana``.
    """
    dirs = [s.parent.parts for s in summaries]
    if len(dirs) == 1:
        return [dirs[0][-1]]
    prefix = 0
    while all(len(d) > prefix + 1 for d in dirs) and len({d[prefix] for d in dirs}) == 1:
        prefix += 1
    suffix = 0
    while all(len(d) > prefix + suffix + 1 for d in dirs) and len({d[-1 - suffix] for d in dirs}) == 1:
        suffix += 1
    return ["/".join(d[prefix : len(d) - suffix]) for d in dirs]


def _percent(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else ""


def _section(summary: dict[str, Any], key: str) -> dict[str, Any]:
    value = summary.get(key)
    return value if isinstance(value, dict) else {}


def _exercises(summary: dict[str, Any]) -> str:
    """``2/3: 01.1 ✓ 01.2 ✗ 01.3 ✓``: which exercises the learner's check cells saw passed (``summary.json``)."""
    results = _section(summary, "exercises")
    if not results:
        return ""
    passed = sum(ok is True for ok in results.values())
    marks = " ".join(f"{name} {'✓' if ok is True else '✗'}" for name, ok in sorted(results.items()))
    return f"{passed}/{len(results)}: {marks}"


def row(learner: str, summary: dict[str, Any], expected_notebooks: int) -> dict[str, Any]:
    """One learner's line of the class table (no secrets are in a summary, so none can show)."""
    stages = _section(summary, "stages")
    ok = [  # 99_cleanup is not a step of the course: it does not count
        name for name, stage in stages.items() if isinstance(stage, dict) and stage.get("ok") and name[:2] != "99"
    ]
    failed = [(name, stage) for name, stage in stages.items() if isinstance(stage, dict) and not stage.get("ok")]
    stuck = ""
    if failed:
        name, stage = failed[-1]
        cell = f" cell {stage['cell']}" if stage.get("cell") is not None else ""
        stuck = f"{name}{cell}: {stage.get('error', 'failed')}"[:160]
    seconds = sum(float(s.get("seconds", 0)) for s in stages.values() if isinstance(s, dict))
    train, evaluation = _section(summary, "train"), _section(summary, "eval")
    base, tuned = _section(evaluation, "base"), _section(evaluation, "tuned")
    answer = str(_section(summary, "chat").get("answer") or "")
    return {
        "learner": learner,
        "profile": summary.get("profile", ""),
        "model": summary.get("model", ""),
        "notebooks ok": f"{len(ok)}/{expected_notebooks}",
        "stuck at": stuck,
        "minutes": round(seconds / 60, 1),
        "train tokens/s": train.get("tokens_per_second"),
        "final loss": train.get("final_loss"),
        "held-out base": _percent(base.get("exact_match")),
        "held-out tuned": _percent(tuned.get("exact_match")),
        "via flow": _percent(_section(evaluation, "flow").get("tuned")),
        "endpoint p50 ms": _section(summary, "endpoint").get("p50_ms"),
        "chat answer": answer if len(answer) <= 60 else answer[:59] + "…",
        "exercises": _exercises(summary),
    }


def parse_time(text: str | datetime, what: str = "--since") -> datetime:
    """An ISO 8601 time (``2025-05-01T09:00``, local time unless it names its zone) as an aware datetime."""
    try:
        when = text if isinstance(text, datetime) else datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a time; write it as 2025-05-01T09:00 (local time)") from None
    return when if when.tzinfo is not None else when.astimezone()


def stale_row(learner: str, summary: dict[str, Any], since: datetime, expected_notebooks: int) -> dict[str, Any] | None:
    """The row of a summary older than ``since`` (its run started before it), or None when it is current.

    Such a summary is left from an earlier run: the newest one was skipped or failed before it wrote. Only who
    and when are shown; its results are not this learner's now, so none are.
    """
    started = summary.get("started")
    try:
        if started and parse_time(started) >= since:
            return None
    except ValueError:
        pass
    when = f"started {started}" if started else "with no start time"
    return {
        "learner": learner,
        "profile": summary.get("profile", ""),
        "model": summary.get("model", ""),
        "notebooks ok": f"0/{expected_notebooks}",
        "stuck at": f"stale: this summary is from a run {when}, before {since.isoformat()}; the newest run did not "
        "write one (skipped, or failed before it began)",
    }


def gradebook_grades(gradebook: str | Path) -> dict[str, str]:
    """``{student: "3/3 (01_data 3/3)"}``: each student's autograded score in nbgrader's ``gradebook.db``."""
    path = Path(gradebook).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: it is the gradebook.db in the nbgrader course folder, written by "
            "`nbgrader autograde` (docs/workshop.md)"
        )
    try:
        from nbgrader.api import Gradebook, MissingEntry
    except ImportError:
        raise ValueError("reading a gradebook needs nbgrader: `pip install -e '.[dev]'` installs it") from None
    grades: dict[str, str] = {}
    with Gradebook(f"sqlite:///{path.resolve()}") as book:
        assignments = [assignment.name for assignment in book.assignments]
        for student in book.students:
            parts, score, possible = [], 0.0, 0.0
            for name in assignments:
                try:
                    submission = book.find_submission(name, student.id)
                except MissingEntry:  # not submitted
                    continue
                score, possible = score + submission.score, possible + submission.max_score
                parts.append(f"{name} {submission.score:g}/{submission.max_score:g}")
            if parts:
                grades[student.id] = f"{score:g}/{possible:g} ({', '.join(parts)})"
    return grades


def grade_of(learner: str, grades: dict[str, str]) -> str:
    """The learner's grade: nbgrader knows them by their hub name, a run folder may carry their account's."""
    return grades.get(learner) or grades.get(learner.removeprefix(HUB_ACCOUNT_PREFIX)) or ""


def collect(
    paths: Iterable[str | Path],
    expected_notebooks: int | None = None,
    since: str | datetime | None = None,
    gradebook: str | Path | None = None,
) -> pd.DataFrame:
    """The class table: one row per run directory found under ``paths``.

    A summary that cannot be read becomes a row that says so, instead of stopping the collection. With
    ``since``, a summary whose run started before that time is marked stale (see :func:`stale_row`). With
    ``gradebook`` (nbgrader's ``gradebook.db``), the ``grade`` column holds each learner's autograded score, and a
    graded learner without a run gets a row of their own.
    """
    from ..paths import course_notebooks

    expected = expected_notebooks or len(course_notebooks())
    cutoff = parse_time(since) if since is not None else None
    summaries = find_summaries(paths)
    rows = []
    for name, path in zip(learner_names(summaries), summaries, strict=True):
        try:
            summary = json.loads(path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            hint = f" — {UNREADABLE_HINT}" if isinstance(error, PermissionError) else ""
            rows.append(
                {"learner": name, "notebooks ok": f"0/{expected}", "stuck at": f"unreadable {path}: {error}{hint}"}
            )
            continue
        stale = stale_row(name, summary, cutoff, expected) if cutoff is not None else None
        rows.append(stale or row(name, summary, expected))
    if gradebook is not None:
        grades = gradebook_grades(gradebook)
        for entry in rows:
            entry["grade"] = grade_of(entry["learner"], grades)
        ran = {entry["learner"] for entry in rows} | {
            entry["learner"].removeprefix(HUB_ACCOUNT_PREFIX) for entry in rows
        }
        rows += [
            {"learner": student, "notebooks ok": f"0/{expected}", "grade": grade}
            for student, grade in grades.items()
            if student not in ran
        ]
    return pd.DataFrame(rows, columns=COLUMNS).fillna("").set_index("learner")


def run_class(
    learners: Sequence[str],
    profile: str = "smoke",
    out: Path | None = None,
    notebooks_root: Path | None = None,
    stop: str | None = None,
) -> pd.DataFrame:
    """Run the course for each learner into ``out/<learner>`` and return the class table."""
    from ..paths import course_notebooks
    from .runner import run_course, select

    bad = [name for name in learners if not LEARNER_NAME.match(name)]
    if bad:
        raise ValueError(f"learner names become folder names; use letters, digits, '.', '_' or '-': {bad}")
    if not learners:
        raise ValueError("name at least one learner (--learners ana ben …)")
    profiles.parameters(profile)  # an unknown profile fails before anything runs
    out = out or runs_dir() / "class"
    started = now()  # a summary whose run started before this is left from an earlier run: stale
    for learner in learners:
        notebooks = None
        if notebooks_root is not None:
            notebooks = course_notebooks(notebooks_root / learner)
            if not notebooks:
                print(f"✗ {learner}: no numbered notebooks in {notebooks_root / learner}", file=sys.stderr)
                continue
        print(f"\n— {learner} —")
        _, failure = run_course(profile, run_dir=str(out / learner), notebooks=notebooks, stop=stop)
        if failure:
            print(f"✗ {learner}: {failure}", file=sys.stderr)
    ran = [out / learner for learner in learners if (out / learner / "summary.json").is_file()]
    if not ran:
        raise ValueError(f"no learner's run produced a summary in {out}")
    return collect(ran, expected_notebooks=len(select(course_notebooks(), None, stop)), since=started)


def spreadsheet_safe(value: Any) -> Any:
    """A text a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) with a leading ``'``."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_csv(frame: pd.DataFrame, csv: str | Path) -> None:
    """The class table as CSV, every text (learner names too) escaped with :func:`spreadsheet_safe`."""
    safe = frame.map(spreadsheet_safe)
    safe.index = safe.index.map(spreadsheet_safe)
    safe.to_csv(csv, lineterminator="\r\n")  # RFC 4180; and a CR inside a text is quoted, not a new row


def _show(frame: pd.DataFrame, csv: str | None) -> None:
    """Print the table without the columns nobody has a value in yet (the CSV keeps every column)."""
    filled = frame.loc[:, [column for column in frame.columns if (frame[column].astype(str) != "").any()]]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(filled.to_string())
    if csv:
        write_csv(frame, csv)
        print(f"\nwritten to {csv}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3course.tools.classroom", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collect_cmd = commands.add_parser("collect", help="one table from many learners' summary.json files")
    collect_cmd.add_argument("paths", nargs="+", help="run directories, summary.json files, or folders holding them")
    collect_cmd.add_argument("--csv", help="also write the table to this CSV file")
    collect_cmd.add_argument(
        "--since", help="mark summaries of runs started before this time stale (e.g. 2025-05-01T09:00, local time)"
    )
    collect_cmd.add_argument("--gradebook", help="nbgrader's gradebook.db: add each learner's autograded score")
    run_cmd = commands.add_parser("run", help="run the course headless for each learner, then collect")
    run_cmd.add_argument("--learners", nargs="+", required=True, help="names; each gets runs/class/<name>/")
    run_cmd.add_argument("--profile", default="smoke", help="smoke (default), local or azureml")
    run_cmd.add_argument("--to", dest="stop", help="stop after this notebook (e.g. 02)")
    run_cmd.add_argument("--notebooks-root", type=Path, help="run DIR/<learner>/*.ipynb instead of the course's")
    run_cmd.add_argument("--out", type=Path, help="where the run directories go (default runs/class)")
    run_cmd.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            frame = collect(args.paths, since=args.since, gradebook=args.gradebook)
        else:
            frame = run_class(args.learners, args.profile, args.out, args.notebooks_root, args.stop)
    except (FileNotFoundError, ValueError, profiles.ProfileError) as error:
        print(error, file=sys.stderr)
        return 2
    _show(frame, args.csv)
    stuck = [name for name, where in frame["stuck at"].items() if where]
    if args.command == "run" and stuck:
        print(f"\n{len(stuck)} of {len(frame)} stuck: {', '.join(stuck)} (see 'stuck at')", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
