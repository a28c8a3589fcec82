"""Only the course's own processes are ever signalled, and its temporary flow copies are private."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from phi3course import endpoint, flow, processes
from phi3course.rehearsal import workspace
from phi3course.rundir import RunDir


@pytest.fixture
def sleeper(tmp_path):
    """A process started as the course starts its servers (its own process group), ended after the test."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = processes.launch(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            tmp_path / f"sleep{len(started)}.log",
            dict(os.environ),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reused(record: dict) -> dict:
    """The record as it reads after the process ended and its ID went to another program started later."""
    return {**record, "started": record["started"] + 3600}


def test_a_record_names_the_process_by_its_id_start_time_and_command(sleeper) -> None:
    process = sleeper()
    record = processes.identify(process.pid)
    assert record["pid"] == process.pid and record["command"][-1] == "import time; time.sleep(120)"
    assert abs(record["started"] - psutil.Process(process.pid).create_time()) < 0.05
    assert processes.ours(record) and processes.alive(record)
    assert not processes.ours(reused(record)) and not processes.alive(reused(record))
    assert not processes.ours({**record, "command": ["/usr/bin/other", "program"]})


def test_a_reused_id_is_never_signalled(sleeper, capsys) -> None:
    process = sleeper()
    record = processes.identify(process.pid)
    assert processes.stop_group(reused(record)) is False
    time.sleep(0.2)
    assert running(process.pid), "a process that is not the recorded one got a signal"
    assert processes.stop_group(record) is True and not running(process.pid)


def not_our_child() -> int:
    """A process in its own group whose parent is not this one (as after a restart, or another program's)."""
    script = (
        "import subprocess; p = subprocess.Popen(['sleep', '120'], start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
    )
    pid = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert psutil.Process(pid).ppid() != os.getpid()
    return pid


def test_a_bare_id_of_a_process_that_is_not_ours_is_not_signalled(capsys) -> None:
    """Older run folders recorded only the ID: it is trusted for a child of this process, and otherwise left alone
    with a line that says how to stop it by hand."""
    pid = not_our_child()
    try:
        assert processes.alive(pid) is False
        assert processes.stop_group(pid) is False
        time.sleep(0.2)
        assert running(pid)
        said = capsys.readouterr().out
        assert f"process {pid}" in said and f"kill -TERM -{pid}" in said
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_endpoint_and_flow_server_records_are_checked_before_a_signal(tmp_path, sleeper) -> None:
    run = RunDir(tmp_path / "run")
    served, flowing = sleeper(), sleeper()
    run.remember(
        tuned_kind="local",
        tuned_scoring_uri="http://127.0.0.1:1/score",
        tuned_key_path=str(tmp_path / "key"),
        tuned_pid=reused(processes.identify(served.pid)),
        flow_pid=reused(processes.identify(flowing.pid)),
    )
    with pytest.raises(endpoint.EndpointError, match="run notebook 03_deploy"):
        endpoint.attach(run)
    assert endpoint.stop(run) is False and flow.stop_serving(run) is False
    time.sleep(0.2)
    assert running(served.pid) and running(flowing.pid)
    assert run.get("tuned_pid") is None and run.get("flow_pid") is None  # the stale records are dropped

    run.remember(tuned_pid=processes.identify(served.pid), flow_pid=processes.identify(flowing.pid))
    assert endpoint.attach(run).pid == served.pid
    assert flow.stop_run(run) == ["pf flow serve", endpoint.TUNED]
    assert not running(served.pid) and not running(flowing.pid)


def test_the_stand_ins_records_are_checked_before_a_signal(tmp_path, sleeper) -> None:
    from phi3course.files import write_json

    root = tmp_path / "rehearsal"
    theirs, ours = sleeper(), sleeper()
    write_json(root / "state" / "jobs" / "old.json", {"name": "old", **reused(processes.identify(theirs.pid))})
    write_json(root / "state" / "jobs" / "new.json", {"name": "new", **processes.identify(ours.pid)})
    assert workspace.stop(root) == ["jobs/new"]
    time.sleep(0.2)
    assert running(theirs.pid) and not running(ours.pid)


def test_a_flow_copy_is_private_to_its_user_and_process(tmp_path) -> None:
    """The copy bound to another connection is never at a fixed name in the shared temporary folder, where
    someone else could have put a flow of theirs first."""
    fixed = Path(tempfile.gettempdir()) / "phi3course-flow-phi3-course-private"
    planted = not fixed.exists()
    if planted:
        fixed.mkdir()
        (fixed / "planted.py").write_text("raise SystemExit('not yours')\n")
    try:
        copy = flow.flow_with_connection("phi3-course-private")
        assert fixed not in (copy, *copy.parents)
        assert not (copy / "planted.py").exists()
        assert "connection: phi3-course-private" in (copy / "flow.dag.yaml").read_text()
        assert copy.parent.stat().st_uid == os.getuid()
        assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
        assert flow.flow_with_connection("phi3-course-private") == copy  # the same copy within a process
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "from phi3course import flow; print(flow.flow_with_connection('phi3-course-private'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert other != str(copy) and not Path(other).exists()  # another process's, removed when it ended
    finally:
        if planted:
            (fixed / "planted.py").unlink()
            fixed.rmdir()


def test_a_flow_copy_for_a_run_is_in_the_run_folder(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    copy = flow.flow_with_connection("phi3-course-base", run)
    assert copy == run.path / "flow" / "chat-phi3-course-base"
    assert "connection: phi3-course-base" in (copy / "flow.dag.yaml").read_text()


def test_a_process_is_identified_by_its_command_even_just_after_its_launch(sleeper) -> None:
    """Right after a launch the kernel may not show the new program's arguments yet; the record waits for them."""
    for _ in range(10):
        process = sleeper()
        assert processes.identify(process.pid)["command"][-1] == "import time; time.sleep(120)"
        assert processes.stop_group(processes.identify(process.pid)) is True
        assert process.poll() is not None  # ended and reaped: no zombie left
