"""Prompt flow: the chat flow over the endpoint, its connection, ``pf flow serve`` and batch evaluation.

The flows live in ``flows/`` (``chat``: the chat flow; ``eval``: exact-match grading). The endpoint's
URL and key reach the flow only through a Prompt flow *custom connection*, whose key is a secret kept
by Prompt flow's local store — never in code, YAML, notebook outputs or logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .endpoint import HOST, EndpointError, free_port
from .paths import course_root
from .processes import launch, stop_group, wait_healthy
from .rundir import RunDir, mask

CONNECTION = "phi3-course-endpoint"  # the name flows/chat/flow.dag.yaml uses
PF_SERVICE_PORT = 23333


def chat_flow() -> Path:
    return course_root() / "flows" / "chat"


def eval_flow() -> Path:
    return course_root() / "flows" / "eval"


def client() -> Any:
    from promptflow.client import PFClient

    from .telemetry import disable_promptflow_telemetry

    disable_promptflow_telemetry()
    return PFClient()


def make_connection(name: str, scoring_uri: str, key_path: str | os.PathLike[str], timeout_s: int = 120) -> str:
    """Create (or update) a custom connection holding the endpoint URL and, as a secret, its key."""
    from promptflow.entities import CustomConnection

    key = Path(key_path).read_text(encoding="utf-8").strip()
    connection = CustomConnection(
        name=name, secrets={"key": key}, configs={"endpoint": scoring_uri, "timeout": str(timeout_s)}
    )
    client().connections.create_or_update(connection)
    return name


def connection_summary(name: str) -> dict[str, str]:
    """What a learner may see of a connection: its endpoint, and the key only masked."""
    stored = client().connections.get(name, with_secrets=True)
    key = stored.secrets["key"]
    return {"name": name, "type": "custom", "endpoint": stored.configs["endpoint"], "key (secret)": mask(key)}


def flow_with_connection(connection: str) -> Path:
    """The chat flow bound to another connection: a copy whose node names ``connection``.

    (``pf run`` can override a node's connection; ``pf flow test`` cannot.)
    """
    if connection == CONNECTION:
        return chat_flow()
    copy = Path(tempfile.gettempdir()) / f"phi3course-flow-{connection}"
    shutil.copytree(chat_flow(), copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".promptflow"))
    dag = copy / "flow.dag.yaml"
    dag.write_text(dag.read_text().replace(f"connection: {CONNECTION}", f"connection: {connection}"))
    return copy


def test(question: str, chat_history: list | None = None, connection: str = CONNECTION) -> str:
    """``pf flow test`` through the SDK: one question, one answer."""
    result = client().test(
        flow=str(flow_with_connection(connection)), inputs={"question": question, "chat_history": chat_history or []}
    )
    return result["answer"]


# --- pf flow serve ---------------------------------------------------------------------------------------
@dataclass
class FlowServer:
    url: str
    pid: int
    log_path: Path

    def ask(self, question: str, chat_history: list | None = None, timeout: float = 120) -> str:
        response = requests.post(
            f"{self.url}/score", json={"question": question, "chat_history": chat_history or []}, timeout=timeout
        )
        if response.status_code != 200:
            raise EndpointError(f"the served flow answered HTTP {response.status_code}: {response.text[:500]}")
        return response.json()["answer"]


def stop_serving(run: RunDir) -> bool:
    """Stop the flow server this run started; returns whether one was running."""
    pid = run.get("flow_pid")
    stopped = stop_group(pid)
    if pid:
        run.remember(flow_pid=None)
    return stopped


def serve(run: RunDir, port: int = 8080, timeout_s: float = 120) -> FlowServer:
    """``pf flow serve`` the chat flow on 127.0.0.1 in the background and wait until it answers."""
    stop_serving(run)
    chosen = free_port(port)
    if chosen != port:
        print(f"Port {port} is busy; the flow is served on {chosen} instead.")
    client()  # writes the telemetry and trace settings the server will read
    log_path = run.path / "flow_serve.log"
    pf = Path(sys.executable).with_name("pf")
    command = [
        str(pf),
        "flow",
        "serve",
        "--source",
        str(chat_flow()),
        "--host",
        HOST,
        "--port",
        str(chosen),
        "--skip-open-browser",
    ]
    process = launch(command, log_path, {**os.environ, "PF_DISABLE_TRACING": "true"})
    run.remember(flow_pid=process.pid)
    server = FlowServer(f"http://{HOST}:{chosen}", process.pid, log_path)
    wait_healthy(process, f"{server.url}/health", log_path, timeout_s, "pf flow serve")
    run.remember(flow_url=server.url)
    return server


def stop_pf_service() -> bool:
    """Stop Prompt flow's local service (port 23333) if something started it; returns whether it ran."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex((HOST, PF_SERVICE_PORT)) != 0:
            return False
    pf = Path(sys.executable).with_name("pf")
    subprocess.run([str(pf), "service", "stop"], capture_output=True, timeout=60)
    return True


# --- a chat for learners ------------------------------------------------------------------------------
@dataclass
class ChatSession:
    """A conversation with the served flow; keeps Prompt flow's chat_history between turns."""

    server: FlowServer
    history: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, question: str) -> str:
        answer = self.server.ask(question, self.history)
        self.history.append({"inputs": {"question": question}, "outputs": {"answer": answer}})
        return answer

    def transcript(self) -> str:
        return "\n".join(f"you:   {t['inputs']['question']}\nmodel: {t['outputs']['answer']}" for t in self.history)


EMPTY_ANSWER = "(an empty answer: the model ended its reply at once)"


def chat_box(session: ChatSession) -> Any:
    """An ipywidgets chat: a text field, a send button and a scrolling history."""
    import html

    import ipywidgets as widgets

    history = widgets.HTML(
        layout=widgets.Layout(height="260px", overflow_y="auto", border="1px solid #ccc", padding="6px")
    )
    question = widgets.Text(placeholder="Ask about the Quillmere Institute…", layout=widgets.Layout(width="70%"))
    send = widgets.Button(description="Send", button_style="primary")

    def shown(answer: str) -> str:
        return html.escape(answer) if answer.strip() else f"<i>{EMPTY_ANSWER}</i>"

    def render() -> None:
        rows = [
            f"<p><b>you</b>: {html.escape(t['inputs']['question'])}<br>"
            f"<b>model</b>: {shown(t['outputs']['answer'])}</p>"
            for t in session.history
        ]
        history.value = "".join(rows)

    def on_send(_: Any) -> None:
        text = question.value.strip()
        if not text:
            return
        question.value = ""
        send.disabled = True
        try:
            session.ask(text)
        except Exception as error:  # shown in the box; the session goes on
            history.value += f"<p style='color:#b00'>{html.escape(str(error))}</p>"
        else:
            render()
        finally:
            send.disabled = False

    send.on_click(on_send)
    question.on_submit(on_send)
    render()
    return widgets.VBox([history, widgets.HBox([question, send])])


# --- batch evaluation -----------------------------------------------------------------------------------
def questions_file(run: RunDir) -> Path:
    """The held-out test questions as flow inputs (question, chat_history) with their expected answers."""
    from .data import read_jsonl, write_jsonl

    rows = read_jsonl(run.require("test_path", made_by="01_data"), field="messages")
    items = [
        {"question": r["messages"][-2]["content"], "chat_history": [], "expected": r.get("answer", "")}
        for r in rows
        if "answer" in r
    ]
    return write_jsonl(run.path / "flow" / "questions.jsonl", items)


def batch_eval(questions: Path, connection: str, label: str) -> tuple[float, Any]:
    """``pf run`` of the chat flow over the questions, then the eval flow over its answers.

    Returns (exact-match, a table of question, expected, answer, correct).
    """
    pf = client()
    answers = pf.run(
        flow=str(chat_flow()),
        data=str(questions),
        column_mapping={"question": "${data.question}", "chat_history": "${data.chat_history}"},
        connections={"ask_endpoint": {"connection": connection}},
        display_name=f"chat-{label}",
        stream=False,
    )
    graded = pf.run(
        flow=str(eval_flow()),
        data=str(questions),
        run=answers,
        column_mapping={"answer": "${run.outputs.answer}", "expected": "${data.expected}"},
        display_name=f"eval-{label}",
        stream=False,
    )
    metrics = pf.get_metrics(graded)
    details = pf.get_details(graded)
    table = details.rename(
        columns={"inputs.answer": "answer", "inputs.expected": "expected", "outputs.correct": "correct"}
    )[["expected", "answer", "correct"]]
    return float(metrics.get("exact_match", 0.0)), table
