"""What every part of the stand-in shares: its error, the poller ``begin_*`` calls return, files, processes."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class RehearsalError(RuntimeError):
    """What Azure ML would refuse, found by the stand-in; the message says what to change."""


def not_found(what: str) -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(f"(rehearsal) {what} was not found in the workspace.")


def quiet_loggers() -> None:
    import logging

    for name in ("azure.ai.ml", "azure.identity", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Poller:
    """What ``begin_*`` calls return: the result is ready at once (the work was done on this machine)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> None:
        return None

    def status(self) -> str:
        return "Succeeded"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def copy_tree(src: Path, dst: Path, link: bool = False) -> None:
    """Copy a file or folder; ``link`` hard-links files where it can (model weights: no second copy on disk)."""

    def copy(a: str, b: str) -> Any:
        if link:
            try:
                os.link(a, b)
                return b
            except OSError:
                pass
        return shutil.copy2(a, b)

    if src.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints")
        shutil.copytree(src, dst, copy_function=copy, ignore=ignore, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        copy(str(src), str(dst))


def tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def base_env(extra_path: str = "") -> dict[str, str]:
    """A process environment as in a fresh container: the notebook's own course/MLflow/Azure variables and the
    inference server's settings (only an entity's ``environment_variables`` set those) left out."""
    dropped = ("COURSE_", "MLFLOW_", "AZURE_", "AZUREML_", "AML_", "PYTHONPATH", "REHEARSAL_")
    dropped += ("WORKER_", "GUNICORN_", "SCORING_TIMEOUT_MS", "SERVER_PORT", "HEALTH_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), extra_path, env.get("PATH", "")]))
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env
