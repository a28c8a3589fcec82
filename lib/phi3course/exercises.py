"""Exercises that check themselves; their reference solutions kept outside the notebooks; nbgrader for a class.

An exercise is three cells at the end of a notebook (``notebooks/01_data.ipynb`` has three):

1. markdown ``### Try it 01.1 (think) — <title>``: its tier, the goal, what to predict and what to discover.
   The tier says what kind of work it is: ``quick`` (a change and a look, minutes), ``think`` (something to
   find out, with a prediction to write first), ``stretch`` (longer, or another run: for a half day or home);
2. code tagged ``exercise``: first line ``# Try it 01.1 — <title>``, a working default (papermill and nbval
   stay green), and the line ``# YOUR CODE HERE`` where a solution goes (nbgrader's own stub). An exercise whose
   lesson is a prediction starts with ``prediction = ""``, which the learner fills in before running;
3. code tagged ``exercise-check``: ``exercises.check("01.1", lambda: <condition>, "<hint>", run=stage.run)``,
   which prints one line — passed, or "not yet" and the hint — and records the result in ``summary.json``.
   With ``prediction=lambda: prediction, result=lambda: <what happened>`` an empty prediction does not pass
   (the line asks for it), and a written one is shown beside what happened.

The reference solutions live in ``notebooks/solutions/<notebook>.yaml`` (``"01.1": <code>``), never in the
learner's notebook. ``COURSE_EXERCISES`` sets how a check that does not pass behaves:

- unset (learning): it prints, and the notebook goes on;
- ``solutions``: it raises — ``make test`` runs the notebooks with the solutions in place this way, so an
  exercise whose solution stops working fails CI;
- ``grade``: it raises too, which is how nbgrader's autograder marks a test cell as failed.

Command line::

    python -m phi3course.exercises list                      # every exercise and whether it has a solution
    python -m phi3course.exercises solve --out runs/solved   # the notebooks with the solutions in place
    python -m phi3course.exercises nbgrader --out ~/grading  # an nbgrader course folder (source/ + config)
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODE_ENV = "COURSE_EXERCISES"
STRICT_MODES = ("solutions", "grade")
EXERCISE_TAG = "exercise"
CHECK_TAG = "exercise-check"
STUB = "# YOUR CODE HERE"  # nbgrader's code stub, so its release of our source is our notebook
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_ID = r"\d\d\.\d+"
TITLE = re.compile(rf"^# Try it ({_ID})\b")
TIERS = ("quick", "think", "stretch")
HEADING = re.compile(rf"^###\s+Try it ({_ID})\b\s*(?:\((\w+)\))?", re.MULTILINE)
ASK_PREDICTION = "write your prediction into `prediction` first (a sentence, before you run the exercise cell)"
CHECK_CALL = re.compile(rf"exercises\.check\(\s*[\"']({_ID})[\"']")


class ExerciseError(ValueError):
    """An exercise cell, a check cell or a solutions file that does not follow the convention."""


class NotPassed(AssertionError):
    """A check that did not pass, under ``COURSE_EXERCISES=solutions`` or ``grade``."""


# --- in the notebook ---------------------------------------------------------------------------------
def mode() -> str:
    return os.environ.get(MODE_ENV, "").strip().lower()


def _value(thing: Any) -> Any:
    return thing() if callable(thing) else thing


def check(
    exercise: str,
    condition: Any,
    hint: str,
    run: Any = None,
    *,
    prediction: Any = None,
    result: Any = None,
) -> None:
    """Print one line saying whether exercise ``exercise`` did what was asked; record it in ``summary.json``.

    ``condition`` is a value or a function of no arguments (so a variable the learner has not made yet
    reads as "not yet", not as an error). A function that raises counts as not passed, and its message
    joins the hint: a ``DataError`` that names the fix is the best hint there is.

    ``prediction`` (the learner's ``prediction`` string, or a function returning it) makes a written prediction
    part of the exercise: an empty one does not pass, and the line asks for it. A written one is printed under
    the line beside ``result`` (a value or a function of no arguments: what really happened).
    """
    error, predicted = "", ""
    try:
        passed = bool(_value(condition))
    except NameError as problem:
        passed, error = False, f"run the exercise cell first ({problem})"
    except Exception as problem:  # the learner's code, whatever it raised
        passed, error = False, f"{type(problem).__name__}: {problem}"
    if prediction is not None:
        try:
            predicted = str(_value(prediction) or "").strip()
        except NameError as problem:
            predicted, error = "", error or f"run the exercise cell first ({problem})"
        if not predicted:
            passed, hint = False, ASK_PREDICTION if not error else f"{ASK_PREDICTION}; {hint}"
    line = f"✓ {exercise} passed" if passed else f"✗ {exercise} not yet — {hint}" + (f" [{error}]" if error else "")
    print(line)
    if predicted:
        try:
            happened = _value(result)
        except Exception as problem:  # what happened cannot be told yet: the exercise cell did not run through
            happened = f"not known yet ({type(problem).__name__}: {problem})"
        print(f"  you predicted: {predicted}")
        if happened is not None and happened != "":
            print(f"  it came out:   {happened}")
    if run is not None:
        run.update_summary(exercises={exercise: passed})
    if not passed and mode() in STRICT_MODES:
        raise NotPassed(line)


def raises(error: type[BaseException], text: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Whether ``function(*args, **kwargs)`` raises ``error`` with ``text`` in its message (for check cells)."""
    try:
        function(*args, **kwargs)
    except error as raised:
        return text.lower() in str(raised).lower()
    return False


# --- in the notebook files -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    id: str
    notebook: Path
    cell: int  # the exercise cell's index
    check_cell: int  # its check cell's index
    title: str
    tier: str  # quick | think | stretch, from the markdown heading that introduces it


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def find(nb: Any, path: Path | str = "notebook") -> list[Exercise]:
    """The exercises of a notebook, checked against the convention (errors name the cell and the fix)."""
    name = Path(path).name
    found: list[Exercise] = []
    cells = nb.cells
    headings: dict[str, str | None] = {}  # exercise id -> the tier its heading names (None: none named)
    for index, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            for heading in HEADING.finditer(cell.source):
                headings[heading[1]] = heading[2]
        tags = _tags(cell)
        if EXERCISE_TAG in tags:
            first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
            title = TITLE.match(first)
            if cell.cell_type != "code" or not title:
                raise ExerciseError(
                    f"{name} cell {index}: an 'exercise' cell is code whose first line is '# Try it NN.N'."
                )
            if [line.strip() for line in cell.source.splitlines()].count(STUB) != 1:
                raise ExerciseError(f"{name} cell {index}: an exercise cell has the line '{STUB}' exactly once.")
            following = next((j for j in range(index + 1, len(cells)) if cells[j].cell_type == "code"), None)
            if following is None or CHECK_TAG not in _tags(cells[following]):
                raise ExerciseError(f"{name} cell {index}: the next code cell must be tagged '{CHECK_TAG}'.")
            called = CHECK_CALL.findall(cells[following].source)
            if called != [title[1]]:
                raise ExerciseError(
                    f"{name} cell {following}: the check cell must call exercises.check({title[1]!r}, …) once."
                )
            if title[1] not in headings:
                raise ExerciseError(
                    f"{name} cell {index}: introduce exercise {title[1]} with a markdown cell above it whose heading "
                    f"is '### Try it {title[1]} (quick) — <title>' (the tier: {' | '.join(TIERS)})."
                )
            tier = headings[title[1]]
            if tier not in TIERS:
                raise ExerciseError(
                    f"{name}: the heading of exercise {title[1]} names no tier: write "
                    f"'### Try it {title[1]} (<tier>) — <title>' with one of {', '.join(TIERS)} (it names {tier!r})."
                )
            found.append(Exercise(title[1], Path(path), index, following, first.removeprefix("# ").strip(), tier))
        elif CHECK_TAG in tags and not any(e.check_cell == index for e in found):
            raise ExerciseError(f"{name} cell {index}: a check cell must follow its exercise cell.")
    ids = [e.id for e in found]
    if len(set(ids)) != len(ids):
        raise ExerciseError(f"{name}: exercise ids repeat: {ids}")
    return found


def solutions_path(notebook: Path | str) -> Path:
    notebook = Path(notebook)
    return notebook.parent / "solutions" / f"{notebook.stem}.yaml"


def load_solutions(path: Path | str) -> dict[str, str]:
    """``{"01.1": code}`` from a solutions file; none when the notebook has no such file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
        raise ExerciseError(f"{path}: expected exercise ids mapped to code blocks ('\"01.1\": |' then the code).")
    return {str(key): value.rstrip("\n") for key, value in loaded.items()}


def apply(nb: Any, solutions: dict[str, str], path: Path | str = "notebook", markers: bool = False) -> Any:
    """A copy of ``nb`` with each exercise's ``# YOUR CODE HERE`` replaced by its solution.

    ``markers`` wraps each solution in nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION``.
    Every exercise needs a solution, and every solution an exercise.
    """
    exercises = find(nb, path)
    ids = {e.id for e in exercises}
    missing, orphans = sorted(ids - set(solutions)), sorted(set(solutions) - ids)
    if missing or orphans:
        raise ExerciseError(
            f"{Path(path).name}: exercises without a solution {missing}, solutions without an exercise {orphans} "
            f"(solutions live in {solutions_path(path)})."
        )
    solved = copy.deepcopy(nb)
    for exercise in exercises:
        cell = solved.cells[exercise.cell]
        lines = []
        for line in cell.source.splitlines():
            if line.strip() == STUB:
                indent = line[: len(line) - len(line.lstrip())]
                body = solutions[exercise.id].splitlines()
                block = [BEGIN, *body, END] if markers else body
                lines.extend(indent + text if text else text for text in block)
            else:
                lines.append(line)
        cell.source = "\n".join(lines)
    return solved


def course_exercises(notebooks: Iterable[Path]) -> list[Exercise]:
    import nbformat

    return [e for path in notebooks for e in find(nbformat.read(path, as_version=4), path)]


def solve(notebooks: Sequence[Path], out: Path) -> list[Path]:
    """Write each notebook, solutions in place, into ``out`` (same names); return the written paths."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        solved = apply(nb, load_solutions(solutions_path(path)), path)
        target = out / path.name
        nbformat.write(solved, target)
        written.append(target)
    return written


# --- nbgrader -------------------------------------------------------------------------------------------
NBGRADER_CONFIG = """# nbgrader configuration written by `python -m phi3course.exercises nbgrader`.
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = {course_id!r}
# The released cell keeps the exercise's working default and gets back our stub, so the notebook runs.
c.ClearSolutions.code_stub = {{"python": "{stub}"}}
# Check cells fail (raise) only in grade mode: the autograder must run with COURSE_EXERCISES=grade.
c.ExecutePreprocessor.timeout = 600
"""


def grade_id(kind: str, exercise: str) -> str:
    """nbgrader ids allow letters, digits, '_' and '-' only: ``01.1`` becomes ``01-1``."""
    return f"{kind}-{exercise.replace('.', '-')}"


def nbgrader_notebook(nb: Any, solutions: dict[str, str], path: Path | str = "notebook", points: int = 1) -> Any:
    """The instructor's (nbgrader *source*) version: solutions in markers, cells carrying nbgrader metadata.

    The exercise cell becomes an autograded-answer cell; the check cell a locked autograder-test cell worth
    ``points``. ``nbgrader generate_assignment`` turns it back into the learner's notebook.
    """
    source = apply(nb, solutions, path, markers=True)
    for exercise in find(nb, path):
        answer, test = source.cells[exercise.cell], source.cells[exercise.check_cell]
        answer.metadata["nbgrader"] = {
            "grade": False,
            "grade_id": grade_id("answer", exercise.id),
            "locked": False,
            "schema_version": 3,
            "solution": True,
            "task": False,
        }
        test.metadata["nbgrader"] = {
            "grade": True,
            "grade_id": grade_id("check", exercise.id),
            "locked": True,
            "points": points,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }
    return source


def nbgrader_course(notebooks: Sequence[Path], out: Path, course_id: str = "phi3-course") -> list[Path]:
    """An nbgrader course folder: ``source/<notebook>/<notebook>.ipynb`` per notebook with exercises."""
    import nbformat

    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if not find(nb, path):
            continue
        folder = out / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        nbformat.write(nbgrader_notebook(nb, load_solutions(solutions_path(path)), path), target)
        written.append(target)
    config = out / "nbgrader_config.py"
    config.write_text(NBGRADER_CONFIG.format(course_id=course_id, stub=STUB), encoding="utf-8")
    return written


# --- command line -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from .paths import course_notebooks

    parser = argparse.ArgumentParser(prog="python -m phi3course.exercises", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "solve", "nbgrader"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: the course's numbered notebooks")
    parser.add_argument("--out", type=Path, help="solve: where solved copies go; nbgrader: the course folder")
    parser.add_argument("--course-id", default="phi3-course", help="nbgrader: the course id")
    args = parser.parse_intermixed_args(argv)
    notebooks = args.notebooks or course_notebooks()
    try:
        if args.command == "list":
            for exercise in course_exercises(notebooks):
                solved = exercise.id in load_solutions(solutions_path(exercise.notebook))
                print(
                    f"{exercise.id:6} {exercise.notebook.stem:22} {exercise.tier:8} "
                    f"{'solution' if solved else 'NO SOLUTION'}  {exercise.title}"
                )
            return 0
        if args.out is None:
            parser.error(f"{args.command} needs --out")
        written = (
            solve(notebooks, args.out)
            if args.command == "solve"
            else nbgrader_course(notebooks, args.out, args.course_id)
        )
    except ExerciseError as error:
        print(error, file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
