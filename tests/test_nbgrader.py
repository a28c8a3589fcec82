"""Grading a class with nbgrader, as docs/workshop.md tells an educator to: 01_data end to end.

The course folder comes from ``python -m phi3course.exercises nbgrader``; ``nbgrader generate_assignment`` must give
back exactly the learners' notebook; ``nbgrader autograde`` (smoke profile, ``COURSE_EXERCISES=grade``) must give an
untouched submission 0 for each check and one with the reference solutions full marks.

nbgrader comes with the course's ``[dev]`` extra (``make setup``). Where it is missing these tests skip, one line
saying how to install it; in CI (``CI`` set) they fail instead, so grading can never stop being tested unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from phi3course import exercises
from phi3course.paths import course_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = next(p for p in course_notebooks() if p.stem == "01_data")
ASSIGNMENT = NOTEBOOK.stem
MISSING = "nbgrader is not installed here: `make setup` (or `pip install -e '.[dev]'`) installs it"


def nbgrader_command() -> str:
    """The ``nbgrader`` of this Python's environment; a skip (a failure in CI) where it is missing."""
    found = shutil.which("nbgrader", path=str(Path(sys.executable).parent))
    if found:
        return found
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{MISSING}; in CI it is required.", pytrace=False)
    pytest.skip(f"{MISSING}; skipped.")


def nbgrader(course: Path, *args: str, **env: str) -> None:
    """``nbgrader <args>`` in ``course``, run as from the course's environment: its ``bin`` first on PATH (nbgrader
    calls ``alembic`` from there), ``env`` added to this process's variables."""
    command = [nbgrader_command(), *args]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    variables = {**os.environ, "PATH": path, **env}
    done = subprocess.run(command, cwd=course, env=variables, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nbgrader course folder with 01_data's source and its release, as the educator makes them."""
    folder = tmp_path_factory.mktemp("grading")
    exercises.nbgrader_course([NOTEBOOK], folder)
    nbgrader(folder, "generate_assignment", ASSIGNMENT, "--force")
    return folder


def released(course: Path) -> nbformat.NotebookNode:
    return nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK.name, as_version=4)


def test_generate_assignment_gives_back_the_learners_notebook(course: Path) -> None:
    ours = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in released(course).cells] == [c.source for c in ours.cells]


def test_autograde_gives_an_untouched_submission_0_and_a_solved_one_full_marks(course: Path, tmp_path: Path) -> None:
    release = released(course)
    checks = [exercises.grade_id("check", e.id) for e in exercises.find(release, NOTEBOOK)]
    assert len(checks) == 3
    submissions = {
        "untouched": release,
        # what `python -m phi3course.exercises solve` writes, made from the released notebook a learner works on
        "solved": exercises.apply(release, exercises.load_solutions(exercises.solutions_path(NOTEBOOK)), NOTEBOOK),
    }
    for student, nb in submissions.items():
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / NOTEBOOK.name)
    grading = {
        exercises.MODE_ENV: "grade",  # a check that does not pass raises: 0 points
        "COURSE_PROFILE": "smoke",
        "COURSE_RUN_DIR": str(tmp_path / "run"),  # one run directory for the class, as the workshop guide says
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])),
    }
    nbgrader(course, "autograde", ASSIGNMENT, "--force", **grading)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {
            student: {
                grade.name: grade.score
                for grade in gradebook.find_submission_notebook(NOTEBOOK.stem, ASSIGNMENT, student).grades
            }
            for student in submissions
        }
    assert scores == {"untouched": dict.fromkeys(checks, 0.0), "solved": dict.fromkeys(checks, 1.0)}
    # The class table reads the same gradebook: one column, each learner's score.
    from phi3course.tools import classroom

    assert classroom.gradebook_grades(course / "gradebook.db") == {
        "solved": f"3/3 ({ASSIGNMENT} 3/3)",
        "untouched": f"0/3 ({ASSIGNMENT} 0/3)",
    }

    def check_lines(student: str) -> list[str]:
        graded = nbformat.read(course / "autograded" / student / ASSIGNMENT / NOTEBOOK.name, as_version=4)
        cells = [c for c in graded.cells if exercises.CHECK_TAG in c.metadata.get("tags", [])]
        return ["".join(o.get("text", "") for o in c.outputs).strip().splitlines()[0].split(" — ")[0] for c in cells]

    assert check_lines("untouched") == ["✗ 01.1 not yet", "✗ 01.2 not yet", "✗ 01.3 not yet"]
    assert check_lines("solved") == ["✓ 01.1 passed", "✓ 01.2 passed", "✓ 01.3 passed"]


def test_the_class_table_joins_runs_and_grades(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grades join the runs by learner: a hub account's ``jupyter-`` prefix is dropped to match nbgrader's student id,
    and a learner who submitted but has no run still gets a row. (The autograde test above reads a real gradebook.)"""
    import json

    from phi3course.tools import classroom

    with pytest.raises(FileNotFoundError, match="nbgrader autograde"):
        classroom.gradebook_grades(tmp_path / "gradebook.db")
    for name in ("jupyter-ana", "jupyter-ben"):
        run = tmp_path / "home" / name / "phi3-course" / "runs" / "local"
        run.mkdir(parents=True)
        stages = {"00_setup": {"ok": True, "seconds": 1}, "01_data": {"ok": True, "seconds": 2}}
        (run / "summary.json").write_text(json.dumps({"profile": "local", "stages": stages}))
    grades = {"ana": "3/3 (01_data 3/3)", "cleo": "0/3 (01_data 0/3)"}
    monkeypatch.setattr(classroom, "gradebook_grades", lambda path: grades)
    table = classroom.collect([tmp_path / "home"], expected_notebooks=6, gradebook=tmp_path / "gradebook.db")
    assert table["grade"].to_dict() == {"jupyter-ana": grades["ana"], "jupyter-ben": "", "cleo": grades["cleo"]}
    assert table["notebooks ok"].to_dict() == {"jupyter-ana": "2/6", "jupyter-ben": "2/6", "cleo": "0/6"}
    assert "grade" not in classroom.collect([tmp_path / "home"], expected_notebooks=6).replace("", None).dropna(
        axis=1, how="all"
    )
