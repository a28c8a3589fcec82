"""Prompt flow plumbing: where the flows are, ``pf flow serve`` as a background process, the batch's inputs.

The flows live in ``flows/`` (``chat``: the chat flow; ``eval``: contains-answer grading). Notebook 04 builds the
connection, ``pf.test`` and the ``pf.run`` batches in its cells; this module keeps what a learner need not read.
The endpoint's URL and key reach the flow only through a Prompt flow *custom connection*, whose key is a secret
kept by Prompt flow's local store — never in code, YAML, notebook outputs or logs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from .endpoint import HOST, free_port, port_free, stop_all
from .endpoint_client import REQUEST_TIMEOUT_S
from .files import DamagedFileError
from .paths import course_root
from .processes import ServerError, identify, launch, listener, lost_port, stop_group, wait_healthy
from .rundir import RunDir

CONNECTION = "phi3-course-endpoint"  # the name flows/chat/flow.dag.yaml uses
BASE_CONNECTION = "phi3-course-base"  # the base model's endpoint, for 04's comparison
# A batch's replies need no more than a short answer (the chat box keeps the flow's default, 128): a model that
# has nothing to say runs to the limit, so the limit is most of a batch's time.
BATCH_NEW_TOKENS = 32


class FlowError(ServerError):
    """The served flow did not start or did not answer."""


# Prompt flow's local service (traces, the run history UI) listens on a port it records in its home
# (PF_HOME_DIRECTORY/pfs/<environment>_pfs.port), starting from 23333. Two learners on one machine each have their
# own home (the hub gives them one), so each gets a port of their own: the first free one from a start that differs
# per home, claimed before Prompt flow would reuse a port another learner's service holds.
PF_SERVICE_FIRST_PORT = 23333
PF_SERVICE_PORT_SPREAD = 2000


def pf_home() -> Path:
    """This process's Prompt flow home: ``PF_HOME_DIRECTORY``, else ``~/.promptflow`` (as Prompt flow decides)."""
    configured = os.environ.get("PF_HOME_DIRECTORY")
    return Path(configured).expanduser().resolve() if configured else Path.home().resolve() / ".promptflow"


def run_name(prefix: str) -> str:
    """A batch run's name no earlier run has: ``prefix`` and the time to the microsecond, as Prompt flow names its
    own (``chat-tuned_20261204_203531_027455``). Rerunning a cell then makes a new run instead of failing."""
    return f"{prefix}_{datetime.now():%Y%m%d_%H%M%S_%f}"


def run_folder(name: str, home: Path | None = None) -> Path:
    """Where Prompt flow keeps the local batch run ``name``: ``<home>/.runs/<name>``."""
    return (home or pf_home()) / ".runs" / name


def lines_finished(name: str, home: Path | None = None) -> int:
    """How many lines of batch run ``name`` have finished so far: Prompt flow writes one file per line and node
    (``node_artifacts/<node>/000000007.jsonl``) as each line ends, so the node with most files tells."""
    nodes = run_folder(name, home) / "node_artifacts"
    try:
        return max((sum(1 for _ in node.glob("*.jsonl")) for node in nodes.iterdir() if node.is_dir()), default=0)
    except OSError:  # not there yet: the run is starting
        return 0


@contextmanager
def lines_progress(name: str, data: str | os.PathLike[str], desc: str, every_s: float = 0.5) -> Iterator[Any]:
    """A progress bar of batch run ``name``'s finished lines, out of the lines of its ``data`` file, while the
    block runs ``pf.run(data=data, name=name, ...)``.

    ``pf.run(stream=False)`` shows nothing until the whole batch has ended, and ``stream=True`` prints its log
    every 10 seconds; this reads the run's folder instead (:func:`lines_finished`) every ``every_s`` seconds.
    """
    from .evaluate import Progress

    total = sum(1 for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip())
    stop = threading.Event()
    with Progress(total, desc, "line") as shown:

        def catch_up() -> None:
            done = min(lines_finished(name), total)
            if done > shown.done:
                shown.update(done - shown.done)

        def watch() -> None:
            while not stop.wait(every_s):
                catch_up()

        watcher = threading.Thread(target=watch, name=f"progress-{name}", daemon=True)
        watcher.start()
        try:
            yield shown
        finally:
            stop.set()
            watcher.join()
            catch_up()


def pf_service_port_file(home: Path | None = None) -> Path:
    """Where Prompt flow records its service's port for this environment (its ``get_current_env_pfs_file``)."""
    import hashlib

    executable = Path(sys.executable.lower()).as_posix()
    digest = hashlib.sha1(executable.encode()).hexdigest()  # Prompt flow's own file name
    return (home or pf_home()) / "pfs" / f"{os.path.basename(os.path.dirname(executable))}_{digest}_pfs.port"


def pf_service_port(home: Path | None = None) -> int | None:
    """The port this home's Prompt flow service uses (or will), or None when none is recorded yet."""
    import yaml

    try:
        recorded = yaml.safe_load(pf_service_port_file(home).read_text(encoding="utf-8")) or {}
        port = recorded.get("service", {}).get("port") if isinstance(recorded, dict) else None
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return port if isinstance(port, int) else None


def _in_use(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((HOST, port)) == 0


def _pf_home_of(process: Any) -> Path | None:
    """The Prompt flow home a process runs with (from its environment), or None where it cannot be read."""
    import psutil

    try:
        env = process.environ()
    except psutil.Error:
        return None
    if env.get("PF_HOME_DIRECTORY"):
        return Path(env["PF_HOME_DIRECTORY"]).expanduser().resolve()
    return Path(env["HOME"]).resolve() / ".promptflow" if env.get("HOME") else None


def _ours(process: Any, home: Path) -> bool:
    """Whether ``process`` runs as this account with this Prompt flow home: this learner's, no one else's."""
    import psutil

    try:
        return process.uids().real == os.getuid() and _pf_home_of(process) == home
    except psutil.Error:
        return False


def claim_pf_service_port(home: Path | None = None) -> int:
    """The port this home's Prompt flow service is to use, recorded where Prompt flow reads it.

    The recorded port is kept while it is free or this home's own service holds it. Otherwise (none recorded, or
    another learner's service holds it, so that Prompt flow would send this learner's traces there) a free port is
    chosen, from a start that differs per home so that two learners starting at once do not pick the same one.
    """
    import zlib

    import yaml

    home = home or pf_home()
    recorded = pf_service_port(home)
    if recorded is not None and (not _in_use(recorded) or ((owner := listener(recorded)) and _ours(owner, home))):
        return recorded
    offset = zlib.crc32(str(home).encode()) % PF_SERVICE_PORT_SPREAD
    for step in range(PF_SERVICE_PORT_SPREAD):
        port = PF_SERVICE_FIRST_PORT + (offset + step) % PF_SERVICE_PORT_SPREAD
        if port != recorded and not _in_use(port) and port_free(port):
            break
    else:
        raise FlowError(
            f"no free port for Prompt flow's service in {PF_SERVICE_FIRST_PORT}-"
            f"{PF_SERVICE_FIRST_PORT + PF_SERVICE_PORT_SPREAD - 1}: stop services left running (pf service stop)"
        )
    path = pf_service_port_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"service": {"port": port}}), encoding="utf-8")
    path.chmod(0o600)
    return port


def chat_flow() -> Path:
    return course_root() / "flows" / "chat"


def eval_flow() -> Path:
    return course_root() / "flows" / "eval"


def client() -> Any:
    from promptflow.client import PFClient

    from .telemetry import disable_promptflow_telemetry

    disable_promptflow_telemetry()
    claim_pf_service_port()  # before Prompt flow could find another learner's service on a port recorded here
    return PFClient()


def make_connection(
    name: str, scoring_uri: str, key_path: str | os.PathLike[str], timeout_s: float = REQUEST_TIMEOUT_S
) -> str:
    """Create (or update) a custom connection holding the endpoint URL and, as a secret, its key."""
    from promptflow.entities import CustomConnection

    key = Path(key_path).read_text(encoding="utf-8").strip()
    connection = CustomConnection(
        name=name, secrets={"key": key}, configs={"endpoint": scoring_uri, "timeout": str(timeout_s)}
    )
    client().connections.create_or_update(connection)
    return name


_COPIES: dict[str, Path] = {}  # connection -> this process's private copy of the chat flow


def _private_copy(connection: str) -> Path:
    """A folder only this user can write, new for each Python process (a fixed name in the shared temporary
    folder could be made first by someone else, with their code in it); removed when the process ends."""
    if connection not in _COPIES or not _COPIES[connection].is_dir():
        folder = Path(tempfile.mkdtemp(prefix=f"phi3course-flow-{connection}-"))  # mode 0700, an unguessable name
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _COPIES[connection] = folder
    return _COPIES[connection] / "chat"


def flow_with_connection(connection: str, run: RunDir | None = None) -> Path:
    """The chat flow bound to another connection: a copy whose node names ``connection``.

    The copy is the run's own (``<run>/flow/chat-<connection>``) when ``run`` is given, otherwise a private
    temporary folder of this process. (``pf run`` can override a node's connection; ``pf flow test`` cannot.)
    """
    if connection == CONNECTION:
        return chat_flow()
    copy = run.path / "flow" / f"chat-{connection}" if run is not None else _private_copy(connection)
    shutil.copytree(chat_flow(), copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".promptflow"))
    dag = copy / "flow.dag.yaml"
    dag.write_text(dag.read_text().replace(f"connection: {CONNECTION}", f"connection: {connection}"))
    return copy


def test(
    question: str, chat_history: list | None = None, connection: str = CONNECTION, run: RunDir | None = None
) -> str:
    """``pf flow test`` through the SDK: one question, one answer."""
    result = client().test(
        flow=str(flow_with_connection(connection, run)),
        inputs={"question": question, "chat_history": chat_history or []},
    )
    return result["answer"]


# --- pf flow serve ---------------------------------------------------------------------------------------
@dataclass
class FlowServer:
    url: str
    pid: int
    log_path: Path
    command: list[str] = field(default_factory=list)

    def ask(self, question: str, chat_history: list | None = None, timeout: float = REQUEST_TIMEOUT_S) -> str:
        response = requests.post(
            f"{self.url}/score", json={"question": question, "chat_history": chat_history or []}, timeout=timeout
        )
        if response.status_code != 200:
            raise FlowError(f"the served flow answered HTTP {response.status_code}: {response.text[:500]}")
        return response.json()["answer"]


def stop_serving(run: RunDir) -> bool:
    """Stop the flow server this run started; returns whether one was running."""
    recorded = run.get("flow_pid")
    stopped = stop_group(recorded)
    if recorded:
        run.remember(flow_pid=None)
    return stopped


def serve(run: RunDir, port: int = 8080, timeout_s: float = 120) -> FlowServer:
    """``pf flow serve`` the chat flow on 127.0.0.1 in the background and wait until it answers.

    Two learners on one machine may both find the same port free and start at once: the one that loses it moves
    to another port, and an answer from a server that is not this one (the other learner's) never counts as ready.
    """
    stop_serving(run)
    chosen = free_port(port)
    if chosen != port:
        print(f"Port {port} is busy; the flow is served on {chosen} instead.")
    client()  # writes the telemetry and trace settings the server will read
    log_path = run.path / "flow_serve.log"
    pf = Path(sys.executable).with_name("pf")
    for attempt in range(3):
        command = [str(pf), "flow", "serve", "--source", str(chat_flow()), "--host", HOST, "--port", str(chosen)]
        command.append("--skip-open-browser")
        process = launch(command, log_path, {**os.environ, "PF_DISABLE_TRACING": "true"})
        run.remember(flow_pid=identify(process.pid))  # what identifies it, so that only it is ever signalled
        server = FlowServer(f"http://{HOST}:{chosen}", process.pid, log_path, command)
        try:  # an answer counts only from this server: the other learner's may answer on the same port
            wait_healthy(process, f"{server.url}/health", log_path, timeout_s, "pf flow serve", own=True)
        except ServerError as error:
            if not lost_port(log_path) or attempt == 2:
                raise FlowError(str(error)) from None
        else:
            run.remember(flow_url=server.url)
            return server
        stop_serving(run)
        taken, chosen = chosen, free_port(chosen)
        print(f"Port {taken} was taken by another server as this one started; the flow is served on {chosen}.")
    raise FlowError(f"pf flow serve could not keep a port: each one it was given was taken. Log: {log_path}")


def stop_pf_service() -> bool:
    """Stop this home's Prompt flow service if it runs; returns whether it did.

    Only a service of this account with this Prompt flow home is stopped: on a machine several learners share,
    the port recorded here may since be another learner's service, which ``pf service stop`` would end.
    """
    import psutil

    home = pf_home()
    port = pf_service_port(home)
    if port is None or not _in_use(port):
        return False
    service = listener(port)
    if service is None or not _ours(service, home):
        return False
    service.terminate()
    try:
        service.wait(10)
    except psutil.TimeoutExpired:
        service.kill()
    return True


def stop_run(run: RunDir) -> list[str]:
    """Stop what ``run`` started on this machine (its flow server, its local deployments); returns what stopped.

    Only a process that is still the one recorded gets a signal (see :mod:`phi3course.processes`).
    """
    stopped = ["pf flow serve"] if stop_serving(run) else []
    return stopped + stop_all(run)


def main(argv: list[str] | None = None) -> int:
    """``python -m phi3course.flow stop FOLDER...``: stop what every run under the folders started (``make clean``
    runs it before it deletes ``runs/``), then Prompt flow's local service."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "stop":
        print("usage: python -m phi3course.flow stop FOLDER...  (the run folders, or a folder above them)")
        return 2
    states = sorted({state for folder in args[1:] for state in Path(folder).rglob("state.json")})
    for state in states:
        run = RunDir(state.parent)
        try:
            stopped = stop_run(run)
        except DamagedFileError as error:
            print(f"✗ nothing it recorded is stopped: {error}", file=sys.stderr)
            continue
        for what in stopped:
            print(f"stopped {what} of {run.path}")
    if stop_pf_service():
        print("stopped Prompt flow's local service")
    return 0


# --- the held-out questions as flow inputs ------------------------------------------------------------
def questions_file(run: RunDir, general: bool = False) -> Path:
    """The held-out test questions as flow inputs (question, chat_history) with their expected answers.

    Only chat rows with an expected answer are questions: with the original tutorial's wikitext (plain text)
    the file is empty, and 04/05 say there is nothing to ask instead of failing. ``general`` adds the
    general-knowledge probe (``kind: general``, its keywords in ``expected``), to see what the fine-tune forgot;
    the two kinds of file have their own names, so both can be in use at once.
    """
    from .data import read_jsonl, write_jsonl
    from .probe import PROBE

    def item(question: str, expected: str, kind: str) -> dict[str, Any]:
        return {
            "question": question,
            "chat_history": [],
            "expected": expected,
            "kind": kind,
            "max_new_tokens": BATCH_NEW_TOKENS,
        }

    rows = read_jsonl(run.require("test_path", made_by="01_data"))
    items = [
        item(r["messages"][-2]["content"], r["answer"], "facts") for r in rows if "messages" in r and "answer" in r
    ]
    if general and items:
        items += [item(question, " / ".join(keywords), "general") for question, keywords in PROBE]
    return write_jsonl(run.path / "flow" / ("questions_and_probe.jsonl" if general else "questions.jsonl"), items)


if __name__ == "__main__":
    raise SystemExit(main())
