"""Background servers the course starts (the local endpoint, ``pf flow serve``): check and stop them.

A process ID alone does not say which program it is: after a restart (or long enough) the number belongs to
someone else's process. So the course records what identifies each process it starts (:func:`identify`: its
ID, its start time and its command line) and signals only a process that still matches that record
(:func:`ours`). A bare ID, as older run folders recorded it, counts only for a child of this Python process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What a run records for a process it started: ``{"pid": 123, "started": 1718000000.12, "command": [...]}``,
# or (older records) the bare ID.
Recorded = Mapping[str, Any] | int | None
START_TOLERANCE_S = 0.05  # the kernel counts start times in clock ticks (1/100 s)


def identify(pid: int) -> dict[str, Any]:
    """What identifies running process ``pid``: ``{"pid", "started", "command"}``, to keep beside its ID.

    A process that is already gone gets ``started: None`` (then only a child of this process counts as it).
    """
    import psutil

    try:
        process = psutil.Process(pid)
        started = process.create_time()
        # Just after a launch the kernel may not have laid out the new program's arguments yet (empty for an
        # instant): wait for them. Without them, the start time alone identifies it.
        deadline = time.monotonic() + 2.0
        while not (command := process.cmdline()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"pid": pid, "started": started, "command": command or None}
    except psutil.Error:
        return {"pid": pid, "started": None, "command": None}


def pid_of(recorded: Recorded) -> int | None:
    """The process ID in a record (or the bare ID itself)."""
    if isinstance(recorded, Mapping):
        recorded = recorded.get("pid")
    return int(recorded) if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0 else None


def _same_command(recorded: list[str], now: list[str]) -> bool:
    """The command line is the recorded one, or a retitled form of it that still names its program's target
    (gunicorn with setproctitle shows ``gunicorn: master [app]``)."""
    if list(recorded) == list(now):
        return True
    shown = " ".join(now)
    last = recorded[-1] if recorded else ""
    return bool(now) and len(last) > 8 and not last.startswith("-") and last in shown


def ours(recorded: Recorded) -> bool:
    """Whether the recorded process is still the one the course started (running or not yet reaped).

    A record must match the running process's start time and command line; a bare ID must be a child of this
    process. Anything else (gone, or the ID now belongs to another program) is not ours.
    """
    import psutil

    pid = pid_of(recorded)
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if isinstance(recorded, Mapping) and recorded.get("started") is not None:
                started = float(recorded["started"])
                command = recorded.get("command")
                same_start = abs(process.create_time() - started) <= START_TOLERANCE_S
                if not same_start or not command or process.status() == psutil.STATUS_ZOMBIE:  # a zombie has none
                    return same_start
                return _same_command(list(command), process.cmdline())
            return process.ppid() == os.getpid()
    except (psutil.Error, TypeError, ValueError):
        return False


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(recorded: Recorded) -> bool:
    """Whether the recorded process is ours and still running (a finished, unreaped child is not)."""
    pid = pid_of(recorded)
    return pid is not None and ours(recorded) and _running(pid)


def unverified(recorded: Recorded) -> str | None:
    """A line for a process recorded by its bare ID that runs but cannot be shown to be ours; else ``None``."""
    pid = pid_of(recorded)
    if pid is None or (isinstance(recorded, Mapping) and recorded.get("started") is not None):
        return None
    if ours(recorded) or not _running(pid):
        return None
    return (
        f"process {pid} was recorded without its start time, so it may be another program now: not stopped. "
        f"If it is the course's server (ps -o pid,lstart,args -p {pid}), stop it: kill -TERM -{pid}"
    )


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is a finished child of ours; whether it was."""
    with contextlib.suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    return False


def _ended(pid: int, within_s: float) -> bool:
    """Wait up to ``within_s`` for ``pid`` to end; a child of ours is reaped, so no zombie is left behind.

    A child that is exiting but not yet a zombie cannot be reaped yet: it counts as ended only once reaped."""
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        if _reap(pid):
            return True
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE and process.ppid() != os.getpid():
                return True  # ended; its own parent reaps it
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            pass  # exiting: look again
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_group(recorded: Recorded, grace_s: float = 5.0) -> bool:
    """End the process group the recorded process leads (SIGTERM, then SIGKILL after ``grace_s``), only if it is
    ours (:func:`ours`); reap it if it is our child. Returns whether it was running and got the signal."""
    pid = pid_of(recorded)
    if pid is None:
        return False
    if not ours(recorded):
        if message := unverified(recorded):
            print(message)
        return False
    if not _running(pid):
        _reap(pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if not _ended(pid, grace_s) and ours(recorded):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _ended(pid, 5.0)
    return True


class ServerError(RuntimeError):
    """A background server did not start or did not answer; the message says what to check."""


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def launch(command: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group (so :func:`stop_group` ends all of it), output to ``log_path``.

    Record ``identify(process.pid)`` where a later call will look for it, never the bare ID.
    """
    with log_path.open("w") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def listener(port: int, host: str = "127.0.0.1") -> Any:
    """The process listening on ``host:port`` (a ``psutil.Process``), or None; one of another account is None too
    (this account cannot see whose it is, and it is not ours)."""
    import psutil

    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            if connection.laddr.ip not in (host, "0.0.0.0", "::"):
                continue
            try:
                return psutil.Process(connection.pid)
            except psutil.Error:
                return None
    return None


def serves(pid: int, port: int) -> bool:
    """Whether the process ``pid`` (or one it started) is what listens on ``port``."""
    import psutil

    found = listener(port)
    if found is None:
        return False
    try:
        return found.pid == pid or pid in {parent.pid for parent in found.parents()}
    except psutil.Error:
        return False


# How a server that lost its port to another says so: gunicorn ("Connection in use", then "Can't connect"),
# uvicorn and waitress ("address already in use", errno 98).
LOST_PORT = ("address already in use", "errno 98", "connection in use")


def lost_port(log_path: Path) -> bool:
    """Whether the server logging to ``log_path`` stopped because another process held its port."""
    try:
        text = log_path.read_text(errors="replace").lower()
    except OSError:
        return False
    return any(words in text for words in LOST_PORT)


def wait_healthy(
    process: subprocess.Popen, health_url: str, log_path: Path, timeout_s: float, what: str, own: bool = False
) -> None:
    """Poll ``health_url`` until it answers 200; if the process dies or time runs out, stop it and show its log.

    With ``own``, a 200 counts only when this process (or one it started) is what listens on the URL's port: two
    servers started at once on one machine may both find a port free, and the one that lost it must not take the
    other's answer for its own."""
    from urllib.parse import urlsplit

    import requests

    port = urlsplit(health_url).port if own else None

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with code {process.returncode}. Log:\n{log_tail(log_path)}")
        try:
            if requests.get(health_url, timeout=2).status_code == 200 and (port is None or serves(process.pid, port)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_group(process.pid)
    raise ServerError(f"{what} was not ready after {timeout_s:.0f} s. Log:\n{log_tail(log_path)}")
