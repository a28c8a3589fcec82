from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from phi3course.paths import course_notebooks
from phi3course.tools import runner


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "local"\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


START = 'from phi3course import course\nstage = course.start("{name}", globals())'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    notebook(nbs / "00_ok.ipynb", START.format(name="00_ok"), "stage.finish()")
    notebook(nbs / "01_bad.ipynb", "x = 1", "# the failing cell\nraise ValueError('broken on purpose')", "y = 2")
    notebook(nbs / "02_after.ipynb", START.format(name="02_after"), "stage.finish()")
    notebook(nbs / "99_cleanup.ipynb", "pass")
    return nbs


def test_notebooks_in_order_and_cleanup_only_when_asked(folder: Path) -> None:
    assert [p.stem for p in course_notebooks(folder)] == ["00_ok", "01_bad", "02_after"]
    assert course_notebooks(folder, include_cleanup=True)[-1].stem == "99_cleanup"
    assert [p.stem for p in runner.select(course_notebooks(folder), "01")] == ["01_bad", "02_after"]
    with pytest.raises(SystemExit, match="00_ok, 01_bad, 02_after"):
        runner.select(course_notebooks(folder), "07")
    assert [p.stem for p in runner.select(course_notebooks(folder), None, "01")] == ["00_ok", "01_bad"]
    assert [p.stem for p in runner.select(course_notebooks(folder), "01", "01_bad")] == ["01_bad"]
    with pytest.raises(SystemExit, match="comes before"):
        runner.select(course_notebooks(folder), "02", "00")


def test_first_failure_stops_the_run_and_names_notebook_and_cell(folder: Path, tmp_path: Path) -> None:
    run, failure = runner.run_course("smoke", run_dir=str(tmp_path / "run"), notebooks=course_notebooks(folder))
    assert failure is not None
    assert failure.notebook == "01_bad"
    assert failure.cell == 2 and failure.code == "# the failing cell"
    assert failure.error == "ValueError: broken on purpose"
    assert "01_bad failed in cell 2" in str(failure)
    summary = json.loads(run.summary_path.read_text())
    assert summary["stages"]["00_ok"]["ok"] is True
    assert summary["stages"]["01_bad"]["ok"] is False and summary["stages"]["01_bad"]["cell"] == 2
    assert "02_after" not in summary["stages"]
    assert (run.path / "01_bad.ipynb").is_file() and not (run.path / "02_after.ipynb").exists()


def test_start_from_a_notebook_keeps_earlier_stages(folder: Path, tmp_path: Path) -> None:
    (folder / "01_bad.ipynb").unlink()
    run_dir = str(tmp_path / "run")
    runner.run_course("smoke", run_dir=run_dir, notebooks=course_notebooks(folder))
    run, failure = runner.run_course("smoke", "02", run_dir=run_dir, notebooks=course_notebooks(folder))
    assert failure is None
    summary = json.loads(run.summary_path.read_text())
    assert set(summary["stages"]) == {"00_ok", "02_after"} and summary["profile"] == "smoke"
    executed = nbformat.read(run.path / "02_after.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'profile = "smoke"' in injected.source and "subjects" not in injected.source


def test_main_reports_an_unknown_profile(capsys) -> None:
    assert runner.main(["--profile", "nope"]) == 2
    assert "Unknown profile 'nope'" in capsys.readouterr().err
