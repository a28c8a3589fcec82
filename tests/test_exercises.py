"""Exercises: the check cells' one line, the cell convention, solutions kept outside, nbgrader's form."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from phi3course import exercises
from phi3course.paths import course_notebooks
from phi3course.rundir import RunDir

NOTEBOOKS = course_notebooks()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def learning_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(exercises.MODE_ENV, raising=False)


# --- the check cell ---------------------------------------------------------------------------------------
def test_a_check_prints_one_line_and_records_it(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(tmp_path)
    exercises.check("01.1", lambda: True, "hint", run=run)
    exercises.check("01.2", False, "set x = 5", run=run)
    assert capsys.readouterr().out.splitlines() == ["✓ 01.1 passed", "✗ 01.2 not yet — set x = 5"]
    assert run.summary["exercises"] == {"01.1": True, "01.2": False}
    exercises.check("01.2", True, "set x = 5", run=run)
    assert run.summary["exercises"] == {"01.1": True, "01.2": True}


def test_a_variable_not_made_yet_or_an_error_is_not_yet_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    exercises.check("01.1", lambda: undefined_name > 1, "set it")  # noqa: F821
    exercises.check("01.2", lambda: 1 / 0, "divide")
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("✗ 01.1 not yet — set it [run the exercise cell first (name 'undefined_name'")
    assert second == "✗ 01.2 not yet — divide [ZeroDivisionError: division by zero]"


@pytest.mark.parametrize("mode", ["solutions", "grade"])
def test_a_check_that_does_not_pass_fails_the_run_in_solutions_and_grade_mode(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv(exercises.MODE_ENV, mode)
    exercises.check("01.1", True, "fine")
    with pytest.raises(exercises.NotPassed, match=r"01\.2 not yet — hint"):
        exercises.check("01.2", False, "hint")


def test_an_empty_prediction_does_not_pass_and_a_written_one_is_shown_beside_the_result(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDir(tmp_path)
    exercises.check("01.1", True, "set x", run=run, prediction=lambda: "", result=lambda: "x is 5")
    exercises.check("01.2", True, "set x", prediction=lambda: undefined_prediction)  # noqa: F821
    exercises.check("01.3", True, "set x", run=run, prediction=lambda: "  x grows  ", result=lambda: "x is 5")
    exercises.check("01.4", False, "set x", prediction="x grows", result=lambda: 1 / 0)
    exercises.check("01.5", True, "set x", prediction="x grows")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"✗ 01.1 not yet — {exercises.ASK_PREDICTION}"
    assert lines[1].startswith(f"✗ 01.2 not yet — {exercises.ASK_PREDICTION}; set x [run the exercise cell first")
    assert lines[2:5] == ["✓ 01.3 passed", "  you predicted: x grows", "  it came out:   x is 5"]
    assert lines[5:8] == [
        "✗ 01.4 not yet — set x",
        "  you predicted: x grows",
        "  it came out:   not known yet (ZeroDivisionError: division by zero)",
    ]
    assert lines[8:] == ["✓ 01.5 passed", "  you predicted: x grows"]
    assert run.summary["exercises"] == {"01.1": False, "01.3": True}


def test_an_empty_prediction_fails_the_run_in_solutions_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(exercises.MODE_ENV, "solutions")
    with pytest.raises(exercises.NotPassed, match="write your prediction"):
        exercises.check("01.1", True, "hint", prediction="")


def test_raises_says_whether_the_error_and_its_words_came() -> None:
    def refuse(text: str) -> None:
        raise ValueError(f"refused {text}")

    assert exercises.raises(ValueError, "REFUSED x", refuse, "x")
    assert not exercises.raises(ValueError, "other words", refuse, "x")
    assert not exercises.raises(ValueError, "refused", print, "accepted")


# --- the cell convention -------------------------------------------------------------------------------------
def notebook(*cells):
    return new_notebook(cells=list(cells))


EXERCISE = new_code_cell(
    "# Try it 07.1 — a thing\nx = 1  # change to 2\n# YOUR CODE HERE\n", metadata={"tags": ["exercise"]}
)
CHECK = new_code_cell('exercises.check("07.1", lambda: x == 2, "set x = 2")', metadata={"tags": ["exercise-check"]})


HEADING = new_markdown_cell("## Try it\n\n### Try it 07.1 (think) — a thing\nPredict first.")


def test_find_reads_an_exercise_its_tier_and_its_check() -> None:
    (found,) = exercises.find(notebook(HEADING, EXERCISE, new_markdown_cell("x"), CHECK))
    assert (found.id, found.cell, found.check_cell, found.title) == ("07.1", 1, 3, "Try it 07.1 — a thing")
    assert found.tier == "think"


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([new_code_cell("x = 1\n# YOUR CODE HERE", metadata={"tags": ["exercise"]}), CHECK], "first line is '# Try it"),
        ([new_code_cell("# Try it 07.1\nx = 1", metadata={"tags": ["exercise"]}), CHECK], "'# YOUR CODE HERE' exactly"),
        ([EXERCISE, new_code_cell("x")], "next code cell must be tagged 'exercise-check'"),
        ([EXERCISE], "next code cell must be tagged 'exercise-check'"),
        ([EXERCISE, new_code_cell('exercises.check("07.2", 1, "")', metadata=CHECK.metadata)], "check\\('07.1'"),
        ([CHECK], "a check cell must follow its exercise cell"),
        ([EXERCISE, CHECK, EXERCISE, CHECK], "exercise ids repeat"),
    ],
)
def test_find_names_the_cell_and_the_fix(cells, message: str) -> None:
    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.find(notebook(HEADING, *cells))


@pytest.mark.parametrize(
    ("heading", "message"),
    [
        (None, r"introduce exercise 07.1 with a markdown cell above it whose heading is '### Try it 07.1 \(quick\)"),
        ("### Try it 07.2 (quick) — another", r"introduce exercise 07\.1"),
        ("### Try it 07.1 — a thing (5 min)", "names no tier.*quick, think, stretch"),
        ("### Try it 07.1 (hard) — a thing", "names no tier.*'hard'"),
    ],
)
def test_an_exercise_without_a_tier_in_its_heading_is_refused(heading: str | None, message: str) -> None:
    cells = [new_markdown_cell(heading)] if heading else []
    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.find(notebook(*cells, EXERCISE, CHECK))


def test_apply_puts_solutions_in_place_and_refuses_missing_or_orphan_ones() -> None:
    nb = notebook(EXERCISE, CHECK, HEADING)  # a heading below its exercise does not count
    with pytest.raises(exercises.ExerciseError, match=r"introduce exercise 07\.1"):
        exercises.apply(nb, {"07.1": "x = 2"})
    nb = notebook(HEADING, EXERCISE, CHECK)
    solved = exercises.apply(nb, {"07.1": "x = 2"})
    assert solved.cells[1].source == "# Try it 07.1 — a thing\nx = 1  # change to 2\nx = 2"
    assert nb.cells[1].source == EXERCISE.source, "the learner's notebook is left alone"
    marked = exercises.apply(nb, {"07.1": "x = 2"}, markers=True).cells[1].source
    assert marked.endswith("### BEGIN SOLUTION\nx = 2\n### END SOLUTION")
    with pytest.raises(exercises.ExerciseError, match=r"without a solution \['07.1'\]"):
        exercises.apply(nb, {})
    with pytest.raises(exercises.ExerciseError, match=r"solutions without an exercise \['07.9'\]"):
        exercises.apply(nb, {"07.1": "x = 2", "07.9": "y"})


def clear_solutions(source: str) -> str:
    """What nbgrader's ClearSolutions does with our code stub, for machines without nbgrader."""
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == exercises.BEGIN:
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + exercises.STUB)
        elif line.strip() == exercises.END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


# --- the course's notebooks --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_follows_the_convention_and_has_a_solution(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    solutions = exercises.load_solutions(exercises.solutions_path(path))
    found = exercises.find(nb, path)
    assert all(e.id.startswith(path.stem[:2] + ".") for e in found), "exercise ids start with the notebook's number"
    exercises.apply(nb, solutions, path)  # raises on a missing or orphan solution
    for exercise in found:
        assert exercises.STUB not in solutions[exercise.id], "a solution replaces the stub"
        assert exercise.tier in exercises.TIERS  # find refuses a heading without one


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_prediction_the_learner_writes_is_read_by_the_check(path: Path) -> None:
    """An exercise cell that asks for a prediction starts it empty, its check reads it, its solution writes one."""
    nb = nbformat.read(path, as_version=4)
    solutions = exercises.load_solutions(exercises.solutions_path(path))
    for exercise in exercises.find(nb, path):
        asks = 'prediction = ""' in nb.cells[exercise.cell].source
        assert asks == ("prediction=lambda: prediction" in nb.cells[exercise.check_cell].source), exercise.id
        if asks:
            assert "prediction = " in solutions[exercise.id], f"{exercise.id}: the solution writes a prediction"
            assert "prediction=lambda: prediction" in nb.cells[exercise.check_cell].source
        if exercise.tier == "think":
            assert asks, f"{exercise.id}: a 'think' exercise asks for a prediction"


def test_the_course_has_every_tier_and_predictions_in_each_notebook_with_exercises() -> None:
    every = exercises.course_exercises(NOTEBOOKS)
    assert {e.tier for e in every} == set(exercises.TIERS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        found = exercises.find(nb, path)
        if found:
            assert any('prediction = ""' in nb.cells[e.cell].source for e in found), path.stem


def test_notebook_01_has_two_or_three_exercises() -> None:
    assert [e.id for e in exercises.find(nbformat.read(NOTEBOOKS[1], as_version=4))] == ["01.1", "01.2", "01.3"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_nbgrader_source_releases_back_into_the_learners_notebook(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    source = exercises.nbgrader_notebook(nb, exercises.load_solutions(exercises.solutions_path(path)), path)
    for exercise in exercises.find(nb, path):
        answer, check = source.cells[exercise.cell], source.cells[exercise.check_cell]
        assert answer.metadata["nbgrader"]["solution"] and not answer.metadata["nbgrader"]["grade"]
        assert check.metadata["nbgrader"]["grade"] and check.metadata["nbgrader"]["locked"]
        assert check.metadata["nbgrader"]["points"] == 1
        for cell in (answer, check):
            assert set(cell.metadata["nbgrader"]["grade_id"]) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
        assert clear_solutions(answer.source) == nb.cells[exercise.cell].source


def run_01(tmp_path: Path, notebook: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute notebook 01 (smoke) as papermill does; the check cells' lines and what they recorded."""
    import papermill as pm

    from phi3course import profiles
    from phi3course.tools.runner import ipc_kernel_manager

    monkeypatch.setenv(exercises.MODE_ENV, mode)  # the kernel inherits it
    params = {**profiles.parameters("smoke"), "run_dir": str(tmp_path / "run")}
    declared = pm.inspect_notebook(str(notebook))
    output = tmp_path / f"{mode or 'learn'}.ipynb"
    pm.execute_notebook(
        str(notebook),
        str(output),
        parameters={k: v for k, v in params.items() if k in declared},
        cwd=str(ROOT / "notebooks"),
        kernel_manager_class=ipc_kernel_manager(),
        progress_bar=False,
    )
    lines = [
        "".join(o.get("text", "") for o in cell.outputs).strip()
        for cell in nbformat.read(output, as_version=4).cells
        if "exercise-check" in cell.metadata.get("tags", [])
    ]
    return {"lines": lines, "recorded": json.loads((tmp_path / "run" / "summary.json").read_text())["exercises"]}


def test_notebook_01_untouched_says_not_yet_and_solved_passes_every_check(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    untouched = run_01(tmp_path, NOTEBOOKS[1], "", monkeypatch)
    assert [line.split(" — ")[0] for line in untouched["lines"]] == [
        "✗ 01.1 not yet",
        "✗ 01.2 not yet",
        "✗ 01.3 not yet",
    ]
    assert untouched["recorded"] == {"01.1": False, "01.2": False, "01.3": False}
    assert untouched["lines"][0] == f"✗ 01.1 not yet — {exercises.ASK_PREDICTION}", "the prediction is asked first"
    (solved,) = exercises.solve([NOTEBOOKS[1]], tmp_path / "solved")
    result = run_01(
        tmp_path, solved, "solutions", monkeypatch
    )  # a check that fails here raises: papermill fails the test
    assert [lines.splitlines()[0] for lines in result["lines"]] == ["✓ 01.1 passed", "✓ 01.2 passed", "✓ 01.3 passed"]
    predicted, came_out = result["lines"][0].splitlines()[1:]
    assert predicted.startswith("  you predicted: test rows: 5 per fact; training rows: 6 per fact")
    shape = r"  it came out:   5 held out: (\d+) training rows, (\d+) test rows, 6 phrasings of .*"
    found = re.fullmatch(shape, came_out)
    assert found and 5 * int(found[1]) == 6 * int(found[2]), came_out  # 12 phrasings: 6 train, 1 validates, 5 test
    assert result["lines"][2].splitlines()[2].startswith("  it came out:   refused: ")
    assert result["recorded"] == {"01.1": True, "01.2": True, "01.3": True}


def test_the_command_line_lists_and_solves(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exercises.main(["list", str(NOTEBOOKS[1])]) == 0
    assert "01.1   01_data                think    solution  Try it 01.1" in capsys.readouterr().out
    assert exercises.main(["solve", "--out", str(tmp_path), str(NOTEBOOKS[1])]) == 0
    solved = nbformat.read(tmp_path / NOTEBOOKS[1].name, as_version=4)
    assert not any(exercises.STUB in c.source for c in solved.cells if "exercise" in c.metadata.get("tags", []))
    assert exercises.main(["nbgrader", "--out", str(tmp_path / "grading"), str(NOTEBOOKS[1])]) == 0
    assert (tmp_path / "grading" / "source" / "01_data" / "01_data.ipynb").is_file()
    assert "code_stub" in (tmp_path / "grading" / "nbgrader_config.py").read_text()


def test_the_class_table_shows_which_exercises_each_learner_passed(tmp_path) -> None:
    from phi3course.tools import classroom

    for learner, results in {"ana": {"01.2": False, "01.1": True, "01.3": True}, "ben": {}}.items():
        run = RunDir(tmp_path / learner)
        run.update_summary(profile="smoke", stages={"01_data": {"seconds": 3.0, "ok": True}})
        for exercise, passed in results.items():
            exercises.check(exercise, passed, "hint", run=run)
    frame = classroom.collect([tmp_path], expected_notebooks=5)
    assert frame.loc["ana", "exercises"] == "2/3: 01.1 ✓ 01.2 ✗ 01.3 ✓"
    assert frame.loc["ben", "exercises"] == ""


def test_untouched_notebooks_pass_no_exercise() -> None:
    """Every exercise asks for a change: run untouched, each check must have recorded "not yet".

    ``make test`` runs this right after nbval has executed the untouched notebooks (``COURSE_UNTOUCHED_RUN_DIR``),
    before the solved notebooks run in the same run directory and record their passes.
    """
    run_dir = os.environ.get("COURSE_UNTOUCHED_RUN_DIR")
    if not run_dir:
        pytest.skip("make test runs this after nbval's run of the untouched notebooks (COURSE_UNTOUCHED_RUN_DIR)")
    summary = json.loads(((ROOT / run_dir) / "summary.json").read_text(encoding="utf-8"))
    every = {exercise.id for exercise in exercises.course_exercises(NOTEBOOKS)}
    assert len(every) >= 9
    assert summary.get("exercises") == dict.fromkeys(every, False)


def test_measured_exercise_times_are_a_record_kind_of_their_own_and_render_as_a_table() -> None:
    from benchmarks import measurements

    measured = {"profile": "local", "exercises": [{"id": "02.1", "title": "forget", "tier": "think", "seconds": 200}]}
    record = measurements.make_record(
        measured, cpu_class="avx2-only", command="c", what="w", conditions="under load", day="2030-01-02"
    )
    measurements.check_record("r.json", record)
    assert record["measurement"]["kind"] == "exercises"
    assert measurements.kind_of({"stages": {}, "exercises": {"01.1": True}}) == "course", "a summary.json stays a run"
    page = measurements.render([("r.json", record)])
    assert "| [2030-01-02](measurements/r.json) · avx2-only | `local` | 02.1 forget | think | 3 min 20 s |  |" in page
