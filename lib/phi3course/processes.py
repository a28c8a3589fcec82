"""Background servers the course starts (the local endpoint, ``pf flow serve``): check and stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_group(pid: int | None, grace_s: float = 5.0) -> bool:
    """End the process group ``pid`` leads (SIGTERM, then SIGKILL after ``grace_s``); reap it if it is ours."""
    stopped = False
    if alive(pid):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped = True
    if pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return stopped


class ServerError(RuntimeError):
    """A background server did not start or did not answer; the message says what to check."""


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def launch(command: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group (so :func:`stop_group` ends all of it), output to ``log_path``."""
    with log_path.open("w") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(process: subprocess.Popen, health_url: str, log_path: Path, timeout_s: float, what: str) -> None:
    """Poll ``health_url`` until it answers 200; if the process dies or time runs out, stop it and show its log."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with code {process.returncode}. Log:\n{log_tail(log_path)}")
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_group(process.pid)
    raise ServerError(f"{what} was not ready after {timeout_s:.0f} s. Log:\n{log_tail(log_path)}")
