from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from phi3course.files import DamagedFileError, atomic_write_text, read_json, write_json
from phi3course.rundir import SUMMARY_KEYS, RunDir, mask

ROOT = Path(__file__).resolve().parents[1]


def test_summary_has_every_fixed_key_from_the_start(tmp_path) -> None:
    summary = RunDir(tmp_path).summary
    assert set(SUMMARY_KEYS) <= set(summary)


def test_summary_merges_sections(tmp_path) -> None:
    run = RunDir(tmp_path)
    run.record_stage("00_setup", 1.234, True)
    run.record_stage("01_data", 2.0, False, error="boom")
    run.update_summary(data={"train_rows": 3})
    run.update_summary(data={"test_rows": 1})
    summary = RunDir(tmp_path).summary
    assert summary["stages"]["00_setup"] == {"seconds": 1.23, "ok": True}
    assert summary["stages"]["01_data"]["error"] == "boom"
    assert summary["data"] == {"train_rows": 3, "test_rows": 1}
    assert summary["finished"]


def test_state_refuses_secrets_but_takes_their_paths(tmp_path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="write_secret"):
        run.remember(endpoint_key="abc")
    path = run.new_secret("endpoint-key")
    run.remember(endpoint_key_path=path)
    assert run.get("endpoint_key_path") == str(path)
    assert len(run.read_secret("endpoint-key")) >= 40
    assert run.read_secret("endpoint-key") not in run.state_path.read_text()


def test_secrets_are_private(tmp_path) -> None:
    run = RunDir(tmp_path)
    path = run.write_secret("k", "value")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(ValueError):
        run.secret_path("../escape")


def test_require_names_the_notebook_to_run(tmp_path) -> None:
    with pytest.raises(KeyError, match="run 01_data first"):
        RunDir(tmp_path).require("train_path", made_by="01_data")


@pytest.mark.parametrize("fails_in", ["write", "fsync", "replace"])
def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch, fails_in) -> None:
    target = tmp_path / "state.json"
    write_json(target, {"old": True})
    if fails_in == "write":  # the text cannot be encoded: fails inside handle.write, after the file was opened
        text = '{"new": "\ud800"}'
    else:
        text = '{"new": true}'

        def broken(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, fails_in, broken)
    with pytest.raises((OSError, UnicodeEncodeError)):
        atomic_write_text(target, text)
    monkeypatch.undo()
    assert read_json(target) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left beside it


def test_a_secret_is_never_readable_by_others_not_even_while_written(tmp_path, monkeypatch) -> None:
    seen: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the moment the value is in the file but not yet renamed into place
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    RunDir(tmp_path).write_secret("endpoint-key", "value")
    assert seen == [0o600]


def test_mask_never_shows_the_whole_secret() -> None:
    secret = "abcdefghijklmnopqrstuvwxyz"
    assert secret not in mask(secret) and mask(secret).startswith("abcd")
    assert mask("ab") == "**"


# --- nothing of the learner's lost ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "text"), [("state.json", '{"train_path": "data/tr'), ("summary.json", ""), ("state.json", "[1, 2]")]
)
def test_a_damaged_state_or_summary_names_the_file_and_what_to_do(tmp_path, name, text) -> None:
    run = RunDir(tmp_path)
    (tmp_path / name).write_text(text)
    read = (lambda: run.state) if name == "state.json" else (lambda: run.summary)
    with pytest.raises(DamagedFileError) as caught:
        read()
    message = str(caught.value)
    assert f"{tmp_path / name} is damaged" in message
    assert f"mv {tmp_path / name} {tmp_path / name}.damaged" in message and "00_setup" in message
    with pytest.raises(DamagedFileError):  # and nothing writes over it: what is left of it stays for the learner
        run.remember(x=1) if name == "state.json" else run.update_summary(x=1)
    assert (tmp_path / name).read_text() == text


def form_cell() -> str:
    notebook = nbformat.read(ROOT / "notebooks" / "01_data.ipynb", as_version=4)
    return next(cell.source for cell in notebook.cells if "add_typed_fact" in cell.source)


def test_facts_typed_into_the_form_are_kept_outside_runs(tmp_path, monkeypatch, capsys) -> None:
    """01's form saves to a file that `make clean` (rm -rf runs) leaves alone, and prints a facts_file that
    names it; git ignores the folder."""
    from phi3course import data, facts

    course = tmp_path / "course"
    monkeypatch.setenv("COURSE_ROOT", str(course))
    run = RunDir(course / "runs" / "smoke")
    cell = {"facts": facts, "data": data, "stage": SimpleNamespace(run=run)}
    exec(compile(form_cell(), "01_data form", "exec"), cell)
    typed = [("Who runs the café?", "Priya", "Name the café's owner."), ("Who mends the bikes?", "Tomas", "Bikes?")]
    for question, answer, test in typed:
        cell["fields"]["question"].value, cell["fields"]["answer"].value = question, answer
        cell["fields"]["test"].value = test
        cell["add_button"].click()
    said = capsys.readouterr().out
    assert said.count("✓") == 2 and "✗" not in said, said
    facts_file = re.search(r'facts_file = "([^"]+)"', said).group(1)
    saved = facts.facts_path(facts_file)
    assert saved.is_file() and not saved.is_relative_to(course / "runs")
    shutil.rmtree(course / "runs")  # what make clean does
    assert [f.answer for f in facts.read_facts(facts.facts_path(facts_file))] == ["Priya", "Tomas"]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(saved.relative_to(course))], cwd=ROOT)
    assert ignored.returncode == 0, f"{saved.relative_to(course)} is not git-ignored"


def make(target: str, cwd: Path, venv: Path, **env: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "Makefile", cwd / "Makefile")
    return subprocess.run(
        ["make", "-s", target, f"VENV={venv}"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "lib"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_clean_stops_what_the_runs_started_before_it_deletes_them(tmp_path) -> None:
    """Local endpoints, pf flow serve and the stand-in's processes are stopped through their records first;
    a process that is not the recorded one is left alone; the typed facts stay."""
    from phi3course import processes
    from phi3course.files import write_json

    def start() -> subprocess.Popen:
        command = [sys.executable, "-c", "import time; time.sleep(120)"]
        return processes.launch(command, tmp_path / "sleep.log", dict(os.environ))

    started = {name: start() for name in ("endpoint", "flow server", "base in a class run", "job", "stranger")}
    try:
        record = {name: processes.identify(process.pid) for name, process in started.items()}
        RunDir(tmp_path / "runs" / "local").remember(
            tuned_kind="local", tuned_pid=record["endpoint"], flow_pid=record["flow server"]
        )
        RunDir(tmp_path / "runs" / "class" / "ana").remember(base_kind="local", base_pid=record["base in a class run"])
        stand_in = tmp_path / "runs" / "rehearsal-run" / "rehearsal"
        write_json(stand_in / "state" / "jobs" / "job-1.json", {"name": "job-1", **record["job"]})
        stale = {**record["stranger"], "started": record["stranger"]["started"] - 3600}
        RunDir(tmp_path / "runs" / "old").remember(tuned_kind="local", tuned_pid=stale)
        write_json(tmp_path / "my_facts" / "my_facts.yaml", {"kept": True})

        done = make("clean", tmp_path, Path(sys.executable).parents[1])
        assert done.returncode == 0, done.stdout + done.stderr
        for name, process in started.items():
            if name != "stranger":
                assert process.wait(timeout=10) is not None, f"{name} still runs after make clean"
        assert started["stranger"].poll() is None
        assert not (tmp_path / "runs").exists() and (tmp_path / "my_facts" / "my_facts.yaml").is_file()
    finally:
        for process in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def fake_venv(folder: Path, log: Path) -> Path:
    """A venv whose python and ruff only note their arguments and PF_HOME_DIRECTORY, already installed."""
    (folder / "bin").mkdir(parents=True)
    for name in ("python", "ruff"):
        tool = folder / "bin" / name
        tool.write_text(f'#!/bin/sh\necho "PF_HOME_DIRECTORY=${{PF_HOME_DIRECTORY:-}} $*" >> {log}\n')
        tool.chmod(0o755)
    (folder.parent / "pyproject.toml").write_text("")
    os.utime(folder.parent / "pyproject.toml", (0, 0))
    (folder / ".installed").touch()
    return folder


def test_make_test_runs_the_notebooks_with_a_prompt_flow_home_of_their_own(tmp_path) -> None:
    """nbval's kernels (and pf.run's workers) use the home make test names, never the learner's ~/.promptflow,
    whatever PF_HOME_DIRECTORY the learner's shell sets."""
    log = tmp_path / "calls.log"
    learners = str(Path.home() / ".promptflow")
    done = make("test", tmp_path, fake_venv(tmp_path / "venv", log), PF_HOME_DIRECTORY=learners)
    assert done.returncode == 0, done.stdout + done.stderr
    notebooks = [line for line in log.read_text().splitlines() if "--nbval" in line]
    assert len(notebooks) >= 3
    homes = {line.split()[0].removeprefix("PF_HOME_DIRECTORY=") for line in notebooks}
    assert len(homes) == 1 and "" not in homes and learners not in homes
    assert Path(homes.pop()).is_relative_to(tmp_path / "runs")


def test_these_tests_keep_prompt_flow_connections_in_a_home_of_their_own() -> None:
    from promptflow._sdk._constants import HOME_PROMPT_FLOW_DIR

    assert Path(os.environ["PF_HOME_DIRECTORY"]).resolve() == HOME_PROMPT_FLOW_DIR
    assert (Path.home() / ".promptflow").resolve() != HOME_PROMPT_FLOW_DIR
    assert HOME_PROMPT_FLOW_DIR.is_relative_to(Path(tempfile.gettempdir()).resolve())
