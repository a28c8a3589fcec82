"""The real inference server on loopback with the tiny model: contract, auth, limits, load."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from benchmarks import loadtest
from phi3course import endpoint, models, snapshot
from phi3course.rundir import RunDir
from phi3course.serving import score


@pytest.fixture(scope="module")
def live(registered) -> endpoint.LocalEndpoint:
    run, uri = registered
    started = endpoint.start_local(run, uri, port=5071)
    yield started
    endpoint.stop(run)


def test_the_local_endpoint_serves_the_folder_the_deployment_uploads(registered, live) -> None:
    """The server runs score.py from the run's scoring folder, which holds it and hardware.py, nothing else."""
    run, _ = registered
    assert snapshot.files(run.path / endpoint.SCORING_FOLDER) == ["hardware.py", "score.py"]


def test_the_seeds_client_code_works_unchanged(live) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {live.key}"}
    data = {
        "input_data": ["Who founded Microsoft?"],
        "params": {"temperature": 0.7, "max_new_tokens": 128, "do_sample": True, "return_full_text": True},
    }
    response = requests.post(live.scoring_uri, json=data, headers=headers)
    response.raise_for_status()
    result = response.json()[0]
    assert isinstance(result, str) and result.startswith("Who founded Microsoft?\n")


def test_legacy_and_chat_payloads(live) -> None:
    legacy = live.score({"input_data": {"input_string": ["a", "b"], "parameters": {"max_new_tokens": 4}}})
    assert isinstance(legacy, list) and len(legacy) == 2 and all(isinstance(x, str) for x in legacy)
    chat = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "?"},
    ]
    assert len(live.score({"input_data": [chat], "params": {"max_new_tokens": 4}})) == 1
    assert len(live.score({"input_data": chat, "params": {"max_new_tokens": 4}})) == 1


def test_greedy_replies_honour_max_new_tokens(live) -> None:
    tokenizer = models.load_tokenizer(models.PRESETS["phi-3-tiny"])
    payload = {"input_data": ["Where is it?"], "params": {"max_new_tokens": 3, "do_sample": False}}
    first, second = live.score(payload)[0], live.score(payload)[0]
    assert first == second
    assert len(tokenizer(first, add_special_tokens=False)["input_ids"]) <= 6


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic abc", "Bearer"])
def test_missing_or_wrong_key_is_401(live, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.post(live.scoring_uri, json={"input_data": ["hi"]}, headers=headers, timeout=30)
    assert response.status_code == 401 and "Bearer" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{not json", "not valid JSON"),
        ({"inputs": ["hi"]}, "'input_data'"),
        ({"input_data": []}, "non-empty list"),
        ({"input_data": [3]}, "must be a string or a list"),
        ({"input_data": [""]}, "empty string"),
        ({"input_data": ["hi"], "params": {"max_new_tokens": "many"}}, "must be int"),
        ({"input_data": ["hi"], "params": {"max_new_tokens": 100000}}, "between 1 and 256"),
        ({"input_data": ["hi"], "params": {"temperature": -1}}, "temperature must be >= 0"),
        ({"input_data": ["hi"], "params": {"do_sample": "yes"}}, "must be bool"),
        ({"input_data": ["hi"], "params": {"beams": 2}}, "unknown params ['beams']"),
        ({"input_data": ["hi"] * 9}, "at most 8 per request"),
        ({"input_data": ["word " * 2000]}, "at most 1024"),
        ({"input_data": {"parameters": {}}}, "input_string"),
    ],
)
def test_bad_requests_are_400_and_the_server_stays_up(live, body, words) -> None:
    sent = {"data": body} if isinstance(body, str) else {"json": body}
    response = requests.post(live.scoring_uri, headers=live.headers(), timeout=60, **sent)
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert isinstance(live.score({"input_data": ["still there?"], "params": {"max_new_tokens": 2}})[0], str)


def test_eight_clients_times_25_requests_without_errors(live) -> None:
    payloads = [{"input_data": [f"question {n}"], "params": {"max_new_tokens": 8}} for n in range(5)]
    result = loadtest.measure(live, payloads, clients=8, per_client=25, timeout=120)
    assert result.requests == 200 and result.errors == 0 and len(result.latencies_ms) == 200


def test_listens_on_loopback_only(live) -> None:
    process = psutil.Process(live.pid)
    listening = {
        c.laddr.ip
        for p in [process, *process.children(recursive=True)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}


def own_run(registered, tmp_path) -> tuple[RunDir, str]:
    """A second run directory on the same MLflow store, so the shared live endpoint is left alone."""
    shared, uri = registered
    run = RunDir(tmp_path / "run")
    run.remember(mlflow_tracking_uri=shared.get("mlflow_tracking_uri"))
    return run, uri


def test_busy_port_restart_and_stop_leave_nothing_behind(registered, tmp_path) -> None:
    run, uri = own_run(registered, tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        first = endpoint.start_local(run, uri, port=busy)
        assert not first.scoring_uri.endswith(f":{busy}/score")
    first_key = first.key
    second = endpoint.start_local(run, uri, port=busy)  # re-running replaces the old deployment
    assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE
    assert second.key != first_key
    assert endpoint.attach(run).pid == second.pid
    assert endpoint.stop(run) is True
    time.sleep(0.2)
    assert not psutil.pid_exists(second.pid)
    with pytest.raises(endpoint.EndpointError, match="run notebook 03_deploy first"):
        endpoint.attach(run)
    assert endpoint.stop(run) is False


def test_a_server_that_cannot_start_shows_its_log(registered, tmp_path) -> None:
    run, _ = own_run(registered, tmp_path)
    with pytest.raises(endpoint.EndpointError, match=r"exited with code .*Log:"):
        endpoint.start_local(run, "models:/no-such-model/1", port=5072, timeout_s=60)


def test_batcher_serves_concurrent_requests_in_one_call() -> None:
    calls: list[int] = []

    def generate(prompts, params):
        calls.append(len(prompts))
        time.sleep(0.05)
        return [p.upper() for p in prompts]

    batcher = score.Batcher(generate, max_batch=16, window_s=0.2)
    params = dict(score.DEFAULTS)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda n: batcher.submit([f"p{n}"], params), range(6)))
    assert replies == [[f"P{n}"] for n in range(6)]
    assert sum(calls) == 6 and len(calls) < 6
    other = {**params, "max_new_tokens": 3}
    with ThreadPoolExecutor(2) as pool:
        mixed = list(pool.map(lambda p: batcher.submit(["x"], p), [params, other]))
    assert mixed == [["X"], ["X"]]


def test_batcher_reports_errors_and_keeps_running() -> None:
    def generate(prompts, params):
        if prompts == ["boom"]:
            raise RuntimeError("model failed")
        return prompts

    batcher = score.Batcher(generate, window_s=0.01)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.submit(["boom"], dict(score.DEFAULTS), timeout_s=10)
    # a dead generation thread would leave this waiting: 10 s, then TimeoutError instead of the reply
    assert batcher.submit(["ok"], dict(score.DEFAULTS), timeout_s=10) == ["ok"]
