from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from phi3course.paths import notebooks_dir
from phi3course.tools import classroom

COMPLETE = {
    "profile": "local",
    "model": "smollm2-135m-instruct",
    "stages": {name: {"seconds": 60.0, "ok": True} for name in ["00_setup", "01_data", "02_fine_tune", "99_cleanup"]},
    "train": {"seconds": 107.1, "tokens": 25047, "tokens_per_second": 233.8, "final_loss": 0.0021},
    "eval": {"base": {"exact_match": 0.0}, "tuned": {"exact_match": 0.9833}, "flow": {"tuned": 0.95}},
    "endpoint": {"kind": "local", "scoring_uri": "http://127.0.0.1:5001/score", "p50_ms": 1105.4},
    "chat": {"question": "Who leads it?", "answer": "Dr. Oskar Oakhurst leads the Quillmere Institute. " * 3},
}
STUCK = {
    "profile": "local",
    "model": "smollm2-135m-instruct",
    "stages": {
        "00_setup": {"seconds": 2.0, "ok": True},
        "01_data": {"seconds": 3.0, "ok": True},
        "02_fine_tune": {"seconds": 30.0, "ok": False, "cell": 7, "error": "MemoryError: out of memory"},
    },
    "train": None,
    "eval": None,
}


def write(path: Path, content: str | dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (path / "summary.json").write_text(text)
    return path


def test_collect_makes_one_row_per_learner_and_says_where_each_is_stuck(tmp_path: Path) -> None:
    homes = tmp_path / "home"
    write(homes / "ana" / "phi3-course" / "runs" / "local", COMPLETE)
    write(homes / "ben" / "phi3-course" / "runs" / "local", STUCK)
    write(homes / "cleo" / "phi3-course" / "runs" / "local", "{not json")
    frame = classroom.collect([homes], expected_notebooks=5)
    assert list(frame.index) == ["ana", "ben", "cleo"]
    ana, ben, cleo = (frame.loc[name] for name in ["ana", "ben", "cleo"])
    assert ana["notebooks ok"] == "3/5" and ana["stuck at"] == "" and ana["minutes"] == 4.0
    assert ana["exact-match base"] == "0.0 %" and ana["exact-match tuned"] == "98.3 %" and ana["via flow"] == "95.0 %"
    assert ana["train tokens/s"] == 233.8 and ana["endpoint p50 ms"] == 1105.4
    assert len(ana["chat answer"]) == 60 and ana["chat answer"].endswith("…")
    assert ben["notebooks ok"] == "2/5" and ben["stuck at"] == "02_fine_tune cell 7: MemoryError: out of memory"
    assert ben["exact-match tuned"] == "" and ben["train tokens/s"] == ""
    assert cleo["stuck at"].startswith("unreadable") and "summary.json" in cleo["stuck at"]


def test_collect_accepts_run_dirs_and_summary_files_and_names_missing_paths(tmp_path: Path) -> None:
    one = write(tmp_path / "runs" / "class" / "ana", COMPLETE)
    two = write(tmp_path / "runs" / "class" / "ben", STUCK)
    frame = classroom.collect([one, two / "summary.json", one])  # the same run twice counts once
    assert list(frame.index) == ["ana", "ben"]
    assert classroom.learner_names([one / "summary.json"]) == ["ana"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        classroom.collect([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no summary\.json"):
        classroom.collect([tmp_path / "empty"])


def test_collect_command_prints_the_table_and_writes_csv(tmp_path: Path, capsys) -> None:
    write(tmp_path / "class" / "ana", COMPLETE)
    write(tmp_path / "class" / "ben", STUCK)
    csv = tmp_path / "class.csv"
    assert classroom.main(["collect", str(tmp_path / "class"), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "ana" in out and "02_fine_tune cell 7" in out and "98.3 %" in out
    assert csv.read_text().splitlines()[0].startswith("learner,profile,model,notebooks ok")
    assert classroom.main(["collect", str(tmp_path / "missing")]) == 2


def test_run_class_refuses_names_that_are_not_folder_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        classroom.run_class(["ana", "../ben"], out=tmp_path)
    with pytest.raises(ValueError, match="Unknown profile"):
        classroom.run_class(["ana"], profile="nope", out=tmp_path)


def test_run_class_runs_each_learners_notebooks_and_one_failure_does_not_stop_the_rest(tmp_path: Path) -> None:
    """Two learners' own notebook copies, smoke profile, 00→01: ben broke his 01, ana's run still completes."""
    root = tmp_path / "submissions"
    for learner in ["ana", "ben"]:
        (root / learner).mkdir(parents=True)
        for name in ["00_setup", "01_data"]:
            shutil.copy(notebooks_dir() / f"{name}.ipynb", root / learner)
    broken = nbformat.read(root / "ben" / "01_data.ipynb", as_version=4)
    code = [i for i, c in enumerate(broken.cells) if c.cell_type == "code"]
    index = code[1]  # the first cell after the parameters
    broken.cells[index].source += "\nraise RuntimeError('ben edited this cell')"
    nbformat.write(broken, root / "ben" / "01_data.ipynb")

    frame = classroom.run_class(["ana", "ben"], "smoke", out=tmp_path / "class", notebooks_root=root, stop="01")
    assert frame.loc["ana", "notebooks ok"] == "2/2" and frame.loc["ana", "stuck at"] == ""
    assert frame.loc["ben", "notebooks ok"] == "1/2"
    assert frame.loc["ben", "stuck at"] == f"01_data cell {index}: RuntimeError: ben edited this cell"
    assert (tmp_path / "class" / "ana" / "01_data.ipynb").is_file()
    assert json.loads((tmp_path / "class" / "ana" / "summary.json").read_text())["data"]["train_rows"] > 0
