"""The local endpoint: the Azure ML inference server running the course's scoring script on 127.0.0.1.

``azmlinfsrv`` listens on 0.0.0.0 and has no address option and no authentication of its own (Azure's
gateway authenticates managed endpoints). Locally we therefore run the same server app under
gunicorn bound to 127.0.0.1, and the scoring script checks a per-deployment key (``@rawhttp``).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from . import snapshot
from .processes import ServerError, alive, identify, launch, lost_port, pid_of, stop_group, wait_healthy
from .rundir import RunDir, mask
from .tracking import store_uri

HOST = "127.0.0.1"
DEFAULT_PORT = 5001
# Deployments a run may have; each keeps <name>_scoring_uri, <name>_key_path, <name>_kind, <name>_pid in state.json
# (<name>_pid: what identifies the server process, processes.identify, so that only that process is ever signalled).
TUNED = "tuned"  # the fine-tuned model (03_deploy)
BASE = "base"  # the base model, served beside it in 04 for the comparison
DEPLOYMENTS = (TUNED, BASE)
SCORING_MODULE = "phi3course.serving.score"  # the scoring script, as the course imports it
SCORING_SCRIPT = "score.py"  # its name in the code folder (scoring_code) that both endpoints serve
SCORING_FOLDER = "scoring-code"  # that folder, in the run directory
THREADS = 16  # requests waiting at once in the one worker; the batcher serves them together


class EndpointError(ServerError):
    """The local endpoint did not start, is not running, or did not answer."""


def scoring_code(dest: str | os.PathLike[str]) -> Path:
    """Folder ``dest`` (``<run>/scoring-code``) holding the scoring script and the course modules it imports, side by
    side, and nothing else: the code the local server runs and Azure ML's ``CodeConfiguration(code=…)`` uploads."""
    return snapshot.copy_flat(SCORING_MODULE, Path(dest))


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` if nothing listens there, otherwise a free port the system picks."""
    if port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class LocalEndpoint:
    """A running local deployment: where it listens and where its key is kept."""

    scoring_uri: str
    key_path: Path
    pid: int
    log_path: Path

    @property
    def key(self) -> str:
        return self.key_path.read_text(encoding="utf-8").strip()

    def headers(self) -> dict[str, str]:
        """The seed's header shape: JSON body, Bearer key."""
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}

    def score(self, payload: Any, timeout: float = 120) -> Any:
        response = requests.post(self.scoring_uri, json=payload, headers=self.headers(), timeout=timeout)
        if response.status_code != 200:
            raise EndpointError(f"HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def describe(self) -> dict[str, str]:
        return {
            "scoring_uri": self.scoring_uri,
            "key": mask(self.key),
            "key_file": str(self.key_path),
            "pid": str(self.pid),
            "log": str(self.log_path),
        }


def key_name(name: str) -> str:
    return f"{name.replace('_', '-')}-key"


def record(run: RunDir, name: str, kind: str, scoring_uri: str, key_path: Path, *, in_flight: int) -> None:
    """Where deployment ``name`` answers, where its key is kept (never the key) and how many requests it takes at
    once (``in_flight``: see :func:`in_flight`), in state.json."""
    if not isinstance(in_flight, int) or in_flight < 1:
        raise ValueError(f"in_flight={in_flight!r}: the number of requests the deployment takes at once, 1 or more.")
    run.remember(
        **{
            f"{name}_kind": kind,
            f"{name}_scoring_uri": scoring_uri,
            f"{name}_key_path": key_path,
            f"{name}_in_flight": in_flight,
        }
    )


def in_flight(run: RunDir, name: str = TUNED) -> int:
    """How many requests a client should have in flight at once at deployment ``name``, as 03_deploy recorded it.

    A local endpoint takes :data:`THREADS` (its one worker batches the requests that wait together); a managed
    online endpoint takes its deployment's ``max_concurrent_requests_per_instance × instance_count`` (its gateway
    answers 429 beyond about twice that). A batch run's workers, a thread pool or a semaphore use this number.
    """
    limit = run.get(f"{name}_in_flight")
    if not limit:
        raise EndpointError(
            f"{run.state_path} does not say how many requests the {name} endpoint takes at once: "
            "rerun 03_deploy (it records the endpoint and its limit)."
        )
    return int(limit)


def stop(run: RunDir, name: str = TUNED) -> bool:
    """Stop local deployment ``name`` of this run, if it is still running. Returns whether one was stopped."""
    recorded = run.get(f"{name}_pid")
    stopped = stop_group(recorded)
    if recorded:
        run.remember(**{f"{name}_pid": None})
    return stopped


def stop_all(run: RunDir) -> list[str]:
    """Stop every local deployment this run started; returns their names."""
    return [name for name in DEPLOYMENTS if run.get(f"{name}_pid") and stop(run, name)]


def start_local(
    run: RunDir,
    model_uri: str,
    port: int = DEFAULT_PORT,
    timeout_s: float = 180,
    env: dict[str, str] | None = None,
    name: str = TUNED,
) -> LocalEndpoint:
    """Deploy ``model_uri`` locally as ``name``: stop that deployment if it runs, make a new key, start, wait."""
    stop(run, name)
    chosen = free_port(port)
    if chosen != port:
        print(f"Port {port} is busy; the endpoint uses {chosen} instead.")
    key_path = run.new_secret(key_name(name))
    log_path = run.path / f"{name}.log"
    code = scoring_code(run.path / SCORING_FOLDER)
    environment = {
        **os.environ,
        "AML_APP_ROOT": str(code),
        "AZUREML_ENTRY_SCRIPT": SCORING_SCRIPT,
        "COURSE_MODEL_URI": model_uri,
        "MLFLOW_TRACKING_URI": run.get("mlflow_tracking_uri") or store_uri(run.path),
        "COURSE_ENDPOINT_KEY_FILE": str(key_path),
        "AML_APP_INSIGHTS_ENABLED": "false",
        "PYTHONDONTWRITEBYTECODE": "1",  # the code folder holds what the deployment uploads, no bytecode beside it
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    for attempt in range(3):  # two runs on one machine may both find a port free: the one that loses it moves
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{HOST}:{chosen}",
            "--workers",
            "1",
            "--worker-class",
            "gthread",
            "--threads",
            str(THREADS),
            "--timeout",
            "600",
            "azureml_inference_server_http.server.entry:app",
        ]
        process = launch(command, log_path, environment, cwd=code)
        run.remember(**{f"{name}_pid": identify(process.pid)})
        endpoint = LocalEndpoint(f"http://{HOST}:{chosen}/score", key_path, process.pid, log_path)
        try:  # an answer counts only from this server, not from another that holds the port
            wait_healthy(process, f"http://{HOST}:{chosen}/", log_path, timeout_s, "the endpoint", own=True)
            break
        except ServerError as error:
            if not lost_port(log_path) or attempt == 2:
                raise EndpointError(str(error)) from None
        stop(run, name)
        taken, chosen = chosen, free_port(chosen)
        print(f"Port {taken} was taken by another server as this one started; the endpoint uses {chosen}.")
    record(run, name, "local", endpoint.scoring_uri, key_path, in_flight=THREADS)
    if name == TUNED:
        run.update_summary(endpoint={"kind": "local", "scoring_uri": endpoint.scoring_uri})
    return endpoint


def attach(run: RunDir, name: str = TUNED) -> LocalEndpoint:
    """The run's running local deployment ``name``, or an error saying to run 03_deploy."""
    recorded = run.get(f"{name}_pid")
    if run.get(f"{name}_kind") != "local" or not alive(recorded):
        raise EndpointError("no local endpoint is running for this run: run notebook 03_deploy first.")
    return LocalEndpoint(
        run.get(f"{name}_scoring_uri"), Path(run.get(f"{name}_key_path")), pid_of(recorded), run.path / f"{name}.log"
    )


def ensure_local(run: RunDir, model_uri: str, name: str = TUNED, port: int = DEFAULT_PORT) -> LocalEndpoint:
    """The running deployment ``name``, started when it is not running."""
    try:
        return attach(run, name)
    except EndpointError:
        return start_local(run, model_uri, port=port, name=name)
