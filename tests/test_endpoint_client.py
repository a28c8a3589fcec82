"""The clients under Azure's gateway: 429/408/502/503 and timeouts retried, wrong requests not, in-flight bounded.

A fake endpoint on 127.0.0.1 (``tests/fake_endpoint.py``) answers what each test scripts. The policy's base delay
is shrunk so that the whole file takes seconds.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from agent_framework import Message
from agent_framework.exceptions import ChatClientException, ChatClientInvalidAuthException
from promptflow.connections import CustomConnection

from phi3course import agents, data, endpoint, flow, schema
from phi3course.endpoint_client import EndpointBusyError, RetryPolicy, post, retry_after
from phi3course.paths import notebooks_dir
from phi3course.rundir import RunDir
from tests.fake_endpoint import ANSWER, FakeEndpoint, Scripted

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=30)
HEADERS = {"Authorization": "Bearer k"}
BODY = {"input_data": [[{"role": "user", "content": "Where is it?"}]], "params": {"max_new_tokens": 8}}

# What Azure's gateway and the scoring container answer when they mean "later"; 0 drops the connection unanswered.
LATER = {
    "429 with Retry-After": [Scripted(429, {"Retry-After": "0"})],
    "429 without Retry-After": [Scripted(429)],
    "503 busy": [Scripted(503), Scripted(503)],
    "502 restarting": [Scripted(502)],
    "408 past request_timeout_ms": [Scripted(408)],
    "slow (a client timeout)": [Scripted(200, delay_s=1.5)],
    "connection dropped": [Scripted(0)],
}


def tool_module():
    spec = importlib.util.spec_from_file_location("ask_endpoint", flow.chat_flow() / "ask_endpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RETRY = FAST
    return module


def connection(url: str, timeout_s: float = 0.5) -> CustomConnection:
    return CustomConnection(configs={"endpoint": url, "timeout": str(timeout_s)}, secrets={"key": "k"})


def af_client(url: str, tmp_path: Path, policy: RetryPolicy = FAST) -> agents.AzureMLScoringClient:
    key = tmp_path / "key"
    key.write_text("k")
    return agents.AzureMLScoringClient(url, key, timeout_s=0.5, retry=policy)


def af_ask(client: agents.AzureMLScoringClient) -> str:
    return asyncio.run(client.get_response([Message("user", ["Where is it?"])])).text


# --- the policy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", LATER.values(), ids=LATER.keys())
def test_the_flow_tool_retries_what_means_later_and_answers(script) -> None:
    with FakeEndpoint(script) as fake:
        assert tool_module().ask_endpoint(connection=connection(fake.url), question="Where is it?") == ANSWER
        assert len(fake.requests) == len(script) + 1


@pytest.mark.parametrize("script", LATER.values(), ids=LATER.keys())
def test_the_agent_framework_client_retries_what_means_later_and_answers(script, tmp_path) -> None:
    with FakeEndpoint(script) as fake:
        assert af_ask(af_client(fake.url, tmp_path)) == ANSWER
        assert len(fake.requests) == len(script) + 1


def test_retry_after_is_waited_for_and_without_it_the_backoff_is_short() -> None:
    with FakeEndpoint([Scripted(429, {"Retry-After": "1"})]) as fake:
        began = time.monotonic()
        assert post(fake.url, json=BODY, headers=HEADERS, timeout_s=5, policy=FAST).status_code == 200
        assert time.monotonic() - began >= 1.0
    with FakeEndpoint([Scripted(429)]) as fake:
        began = time.monotonic()
        assert post(fake.url, json=BODY, headers=HEADERS, timeout_s=5, policy=FAST).status_code == 200
        assert time.monotonic() - began < 0.5


def test_retry_after_as_an_http_date_and_unreadable() -> None:
    import email.utils

    class Answer:
        def __init__(self, value: str) -> None:
            self.headers = {"Retry-After": value}

    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 < retry_after(Answer(soon)) <= 20
    assert retry_after(Answer("7")) == 7.0
    assert retry_after(Answer("soon")) is None and retry_after(Answer("")) is None


def test_the_backoff_doubles_up_to_its_ceiling_with_jitter() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=5.0)
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        waits = [policy.backoff(retry) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(set(waits)) > 1


@pytest.mark.parametrize("status", [400, 401, 413])
def test_a_wrong_request_is_not_sent_again(status, tmp_path) -> None:
    words = {400: r"refused the request \(400\)", 401: r"refused the key \(401\)", 413: r"too large \(413\)"}
    with FakeEndpoint([Scripted(status)] * 3) as fake:
        with pytest.raises(Exception, match=words[status]):
            tool_module().ask_endpoint(connection=connection(fake.url), question="Where is it?")
        assert len(fake.requests) == 1
        with pytest.raises(ChatClientInvalidAuthException if status == 401 else ChatClientException):
            af_ask(af_client(fake.url, tmp_path))
        assert len(fake.requests) == 2


def test_the_last_attempt_ends_in_an_error_that_says_what_to_change(tmp_path) -> None:
    with FakeEndpoint([Scripted(429)] * 20) as fake:
        with pytest.raises(Exception, match=r"still busy after 4 attempt\(s\).*HTTP 429") as caught:
            tool_module().ask_endpoint(connection=connection(fake.url), question="Where is it?")
        assert len(fake.requests) == 4
        for fix in ("endpoint.in_flight", "max_concurrent_requests_per_instance", "instance_count", "get_logs"):
            assert fix in str(caught.value)
        with pytest.raises(ChatClientException, match=r"still busy after 4 attempt\(s\)"):
            af_ask(af_client(fake.url, tmp_path))
        assert len(fake.requests) == 8


def test_a_wait_past_the_deadline_is_not_made() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.01, deadline_s=5)
    with FakeEndpoint([Scripted(503, {"Retry-After": "60"})] * 5) as fake:
        began = time.monotonic()
        with pytest.raises(EndpointBusyError, match=r"after 1 attempt\(s\).*HTTP 503.*5 s deadline"):
            post(fake.url, json=BODY, headers=HEADERS, timeout_s=5, policy=policy)
        assert time.monotonic() - began < 1 and len(fake.requests) == 1


def test_an_endpoint_that_is_down_is_not_retried() -> None:
    """Nothing listens: no pause could help, so the caller's 'not reachable: start it' comes at once."""
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        post(f"http://127.0.0.1:{closed}/score", json=BODY, headers=HEADERS, timeout_s=5)  # the default policy
    assert time.monotonic() - began < 0.5


def test_a_policy_that_cannot_send_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="deadline_s more than 0"):
        RetryPolicy(deadline_s=0)


# --- how many in flight -----------------------------------------------------------------------------------
def test_in_flight_is_what_the_endpoint_takes(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(endpoint.EndpointError, match="rerun 03_deploy"):
        endpoint.in_flight(run)
    endpoint.record(run, endpoint.TUNED, "azureml", "https://x/score", tmp_path / "k", in_flight=3)
    assert endpoint.in_flight(run) == 3
    with pytest.raises(ValueError, match="1 or more"):
        endpoint.record(run, endpoint.BASE, "azureml", "https://x/score", tmp_path / "k", in_flight=0)


def azure_run(tmp_path: Path, url: str, limit: int, facts: int) -> RunDir:
    """A run whose endpoint is a managed one taking ``limit`` requests at once, with ``facts`` held-out questions."""
    run = RunDir(tmp_path / "run")
    key = run.write_secret(endpoint.key_name(endpoint.TUNED), "k")
    endpoint.record(run, endpoint.TUNED, "azureml", url, key, in_flight=limit)
    rows = [{**schema.chat_row(f"Where is fact {i}?", "In Lowmarsh."), "answer": "Lowmarsh"} for i in range(facts)]
    run.remember(test_path=str(data.write_jsonl(tmp_path / "test.jsonl", rows)))
    return run


def cell(notebook: str, starts: str) -> str:
    cells = nbformat.read(notebooks_dir() / notebook, as_version=4).cells
    (source,) = [c.source for c in cells if c.cell_type == "code" and c.source.startswith(starts)]
    return source


def test_03s_held_out_cell_keeps_to_the_limit_and_rides_out_a_429(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from phi3course import endpoint_client, evaluate
    from phi3course.serving import score

    # The 429 takes as long as an answer, so every worker the cell starts is in flight at once: one too many shows.
    with FakeEndpoint([Scripted(429, delay_s=0.3)], work_s=0.3) as fake:
        run = azure_run(tmp_path, fake.url, limit=2, facts=6 * score.MAX_INPUTS)  # six requests
        space = {
            **{"stage": SimpleNamespace(run=run), "scoring_uri": fake.url, "headers": HEADERS},
            **{"data": data, "endpoint": endpoint, "endpoint_client": endpoint_client, "evaluate": evaluate},
            **{"score": score, "requests": requests, "ThreadPoolExecutor": ThreadPoolExecutor},
        }
        exec(compile(cell("03_deploy.ipynb", "if scoring_uri:\n    graded ="), "03_deploy[held-out]", "exec"), space)
        assert fake.most_in_flight == 2  # the limit, reached and never passed
        assert space["through_endpoint"] == 1.0 and len(fake.requests) == 7


def test_05s_batch_keeps_to_the_limit(tmp_path) -> None:
    import json

    from phi3course.display import table
    from phi3course.evaluate import contains_answer

    with FakeEndpoint(work_s=0.3) as fake:
        run = azure_run(tmp_path, fake.url, limit=2, facts=6)
        run.update_summary(eval={"flow": {"tuned": 1.0}})  # 04's figure and answers, which the cells compare with
        answers = data.write_jsonl(tmp_path / "answers-tuned.jsonl", [{"question": "q", "reply": "r", "correct": True}])
        run.remember(flow_answers_path=str(answers))
        space = {
            **{"stage": SimpleNamespace(run=run), "endpoint": endpoint, "flow": flow, "json": json, "table": table},
            "Path": Path,
            **{"ask": agents.ask, "chat_workflow": agents.chat_workflow, "contains_answer": contains_answer},
            "client": af_client(fake.url, tmp_path),
        }
        source = cell("05_agent_framework.ipynb", "import asyncio\n\nimport pandas")
        code = compile(source, "05_agent_framework[batch]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        asyncio.run(eval(code, space))  # the cell awaits at top level, as Jupyter runs it
        assert fake.most_in_flight == 2 and len(fake.requests) == 6
        assert space["scores"]["Agent Framework (05)"] == 1.0
