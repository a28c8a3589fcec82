"""Background servers the course starts (the local endpoint, ``pf flow serve``): check and stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import time


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
