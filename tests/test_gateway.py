"""A rehearsed deployment behaves as a managed online endpoint does: the scoring script under azmlinfsrv's server
(WORKER_COUNT sync workers) behind a gateway with Azure's key check, in-flight limit and request timeout."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from azure.ai.ml.entities import (
    CodeConfiguration,
    Environment,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
)

from phi3course import azure, rehearsal
from phi3course.processes import alive

# A scoring script that answers at once, or after {"sleep": seconds}, with the process that answered.
SCORE = """
import json, os, time

def init():
    print("ready")

def run(raw_data):
    body = json.loads(raw_data)
    time.sleep(float(body.get("sleep", 0)))
    return {"pid": os.getpid()}
"""


# A scoring script that checks the key it is sent, as the course's score.py does (COURSE_ENDPOINT_KEY_FILE).
KEYED = """
import hmac, os
from pathlib import Path

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

def init():
    global key
    key = Path(os.environ["COURSE_ENDPOINT_KEY_FILE"]).read_text().strip()

@rawhttp
def run(request):
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        return AMLResponse("the container refused the key", 401)
    return AMLResponse("ok", 200)
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):
    workspace = rehearsal.Workspace(tmp_path_factory.mktemp("gateway") / "rehearsal")
    yield workspace
    workspace.stop_all()


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("code")
    (folder / "score.py").write_text(SCORE)
    return folder


def new_endpoint(ws) -> str:
    """A new endpoint, with an empty model registered for its deployments."""
    name = azure.endpoint_name("gateway-test")
    ws.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name, auth_mode="key")).result()
    model_folder = ws.root.parent / "model"
    model_folder.mkdir(exist_ok=True)
    (model_folder / "weights.txt").write_text("none")
    ws.models.create_or_update(Model(name="gateway-test", path=str(model_folder), type="custom_model"))
    return name


@pytest.fixture(scope="module")
def endpoint(ws):
    name = new_endpoint(ws)
    yield name
    ws.online_endpoints.begin_delete(name=name).result()  # its deployments, and its name in the region


@pytest.fixture(scope="module")
def deploy(ws, code):
    def deploy(
        endpoint: str, name: str, variables: dict[str, str] | None = None, folder: Path | None = None, **request: int
    ) -> str:
        """Deploy SCORE (or the script in ``folder``) as ``name`` with ``request`` settings; its scoring URI (the
        gateway's)."""
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint,
            model="azureml:gateway-test:1",
            code_configuration=CodeConfiguration(code=str(folder or code), scoring_script="score.py"),
            environment=Environment(
                image="mcr.microsoft.com/azureml/minimal-py312-inference:latest",
                conda_file=azure.conda_spec("serve", ["azureml-inference-server-http"], []),
            ),
            instance_type="Standard_E4s_v3",
            instance_count=1,
            environment_variables=variables or {},
            request_settings=OnlineRequestSettings(**request) if request else None,
        )
        ws.online_deployments.begin_create_or_update(deployment).result()
        return ws.online_deployments.scoring_uri(name, endpoint)

    return deploy


@pytest.fixture(scope="module")
def single(endpoint, deploy) -> str:
    """Azure's default of one request at a time per instance (two in flight), with time to wait for the worker.
    The notebook's own server settings do not reach the deployment: only its environment_variables do."""
    with pytest.MonkeyPatch.context() as notebook:
        notebook.setenv("WORKER_COUNT", "3")
        notebook.setenv("GUNICORN_CMD_ARGS", "--threads 4")
        return deploy(endpoint, "single", max_concurrent_requests_per_instance=1, request_timeout_ms=20000)


def headers(ws, endpoint: str, which: str = "primary") -> dict[str, str]:
    return {"Authorization": f"Bearer {getattr(ws.online_endpoints.get_keys(endpoint), f'{which}_key')}"}


def together(uri: str, hdrs: dict[str, str], bodies: list[dict]) -> list[requests.Response]:
    """Send ``bodies`` at once, one thread each."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: requests.post(uri, json=body, headers=hdrs, timeout=60), bodies))


def record_of(ws, endpoint: str, name: str) -> dict:
    return json.loads(ws.state_file("deployments", endpoint, name).read_text())


def workers(ws, endpoint: str, name: str) -> list[psutil.Process]:
    return psutil.Process(record_of(ws, endpoint, name)["pid"]).children()


def test_the_server_and_its_gateway_listen_on_loopback_only(ws, endpoint, single) -> None:
    """azmlinfsrv would bind 0.0.0.0; the rehearsal's copy of its command binds 127.0.0.1, as the gateway does."""
    record = record_of(ws, endpoint, "single")
    processes = [psutil.Process(record["pid"]), psutil.Process(record["gateway"]["pid"])]
    listening = {c.laddr for p in processes for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert {(a.ip, a.port) for a in listening} == {("127.0.0.1", record["port"]), ("127.0.0.1", record["gateway_port"])}


def test_one_sync_worker_by_default_as_azmlinfsrv_starts_it(ws, endpoint, single) -> None:
    """Two requests at once are answered one after the other, by the one worker."""
    uri = single
    assert len(workers(ws, endpoint, "single")) == 1
    began = time.monotonic()
    answers = together(uri, headers(ws, endpoint), [{"sleep": 1}, {"sleep": 1}])
    assert [a.status_code for a in answers] == [200, 200]
    assert time.monotonic() - began >= 2.0  # one after the other: one sync worker, no threads
    assert len({a.json()["pid"] for a in answers}) == 1
    assert answers[0].headers["azureml-model-deployment"] == "single"
    assert "Worker Count: 1" in ws.online_deployments.get_logs("single", endpoint)


def test_worker_count_and_gunicorn_cmd_args_are_honoured(ws, endpoint, deploy) -> None:
    uri = deploy(endpoint, "two", {"WORKER_COUNT": "2"}, max_concurrent_requests_per_instance=2)
    assert len(workers(ws, endpoint, "two")) == 2
    threaded = deploy(
        endpoint, "threaded", {"GUNICORN_CMD_ARGS": "--threads 2"}, max_concurrent_requests_per_instance=2
    )
    began = time.monotonic()
    answers = together(threaded, headers(ws, endpoint), [{"sleep": 1.5}, {"sleep": 1.5}])
    assert [a.status_code for a in answers] == [200, 200] and len({a.json()["pid"] for a in answers}) == 1
    assert time.monotonic() - began < 2.9  # side by side in one worker's two threads
    assert requests.post(uri, json={}, headers=headers(ws, endpoint), timeout=30).status_code == 200


def test_beyond_twice_the_concurrent_requests_the_gateway_answers_429(ws, endpoint, single) -> None:
    """max_concurrent_requests_per_instance=1, one instance: two requests in flight are taken, the third refused."""
    answers = together(single, headers(ws, endpoint), [{"sleep": 2}, {"sleep": 2}, {"sleep": 2}])
    assert sorted(a.status_code for a in answers) == [200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert "Too many pending requests" in refused.text and "max_concurrent_requests_per_instance" in refused.text


def test_a_request_past_request_timeout_ms_gets_408(ws, endpoint, deploy) -> None:
    uri = deploy(endpoint, "slow", request_timeout_ms=1000)
    began = time.monotonic()
    answer = requests.post(uri, json={"sleep": 4}, headers=headers(ws, endpoint), timeout=60)
    assert answer.status_code == 408 and "request_timeout_ms" in answer.text
    assert time.monotonic() - began < 3.5


def test_request_timeout_beyond_azures_maximum_is_refused(ws, endpoint, deploy) -> None:
    with pytest.raises(rehearsal.RehearsalError, match="at most 180000"):
        deploy(endpoint, "patient", request_timeout_ms=600000)


def test_the_gateway_checks_the_key_as_azure_words_it(ws, endpoint, single) -> None:
    """The scoring script here checks no key: a 401 can only be the gateway's. Either endpoint key is accepted."""
    uri = single
    wrong = requests.post(uri, json={}, headers={"Authorization": "Bearer not-the-key"}, timeout=30)
    assert (wrong.status_code, wrong.text) == (401, "key_auth_access_denied")
    missing = requests.post(uri, json={}, timeout=30)
    assert (missing.status_code, missing.text) == (401, "key_auth_bad_header_forbidden")
    for which in ("primary", "secondary"):
        assert requests.post(uri, json={}, headers=headers(ws, endpoint, which), timeout=30).status_code == 200


def test_either_endpoint_key_reaches_a_script_that_checks_its_key_and_a_regenerated_one_replaces_it(
    ws, deploy, tmp_path
) -> None:
    """Azure accepts the primary or the secondary key. The container never sees them: behind the gateway a script that
    checks its key (as score.py does) answers both, and after ``begin_regenerate_keys`` the old key is refused while
    the other one and the new one work, with no restart."""
    endpoint = new_endpoint(ws)
    code = tmp_path / "keyed"
    code.mkdir()
    (code / "score.py").write_text(KEYED)
    try:
        uri = deploy(endpoint, "keyed", folder=code)
        before = ws.online_endpoints.get_keys(endpoint)
        for which in ("primary", "secondary"):
            answer = requests.post(uri, json={}, headers=headers(ws, endpoint, which), timeout=30)
            assert (answer.status_code, answer.text) == (200, "ok"), which
        ws.online_endpoints.begin_regenerate_keys(endpoint, key_type="secondary").result()
        after = ws.online_endpoints.get_keys(endpoint)
        assert after.primary_key == before.primary_key and after.secondary_key != before.secondary_key
        old = requests.post(uri, json={}, headers={"Authorization": f"Bearer {before.secondary_key}"}, timeout=30)
        assert (old.status_code, old.text) == (401, "key_auth_access_denied")
        for which in ("primary", "secondary"):
            assert requests.post(uri, json={}, headers=headers(ws, endpoint, which), timeout=30).status_code == 200
        with pytest.raises(rehearsal.RehearsalError, match="a primary and a secondary key"):
            ws.online_endpoints.begin_regenerate_keys(endpoint, key_type="tertiary")
    finally:
        ws.online_endpoints.begin_delete(name=endpoint).result()


def test_a_stopped_container_gets_503_and_deleting_stops_the_gateway(ws, endpoint, deploy) -> None:
    from phi3course.processes import stop_group

    uri = deploy(endpoint, "gone")
    record = json.loads(ws.state_file("deployments", endpoint, "gone").read_text())
    assert alive(record["gateway"]) and alive(record)
    stop_group(record)  # the scoring container ends; the gateway still answers
    down = requests.post(uri, json={}, headers=headers(ws, endpoint), timeout=30)
    assert down.status_code == 503 and "not running" in down.text
    ws.online_deployments.begin_delete("gone", endpoint).result()
    assert not alive(record["gateway"])
    with pytest.raises(requests.ConnectionError):
        requests.post(uri, json={}, headers=headers(ws, endpoint), timeout=5)


def test_stop_all_and_deleting_the_endpoint_leave_no_gateway(ws, deploy) -> None:
    """What 99_cleanup calls. (stop_all ends the other tests' deployments too: each test deploys its own.)"""
    endpoint = new_endpoint(ws)
    deploy(endpoint, "last")
    record = json.loads(ws.state_file("deployments", endpoint, "last").read_text())
    assert f"{endpoint}/last (gateway)" in ws.stop_all() and not alive(record["gateway"]) and not alive(record)
    deploy(endpoint, "last")
    record = json.loads(ws.state_file("deployments", endpoint, "last").read_text())
    ws.online_endpoints.begin_delete(name=endpoint).result()
    assert not alive(record["gateway"]) and not alive(record)


def test_a_client_that_has_its_answer_may_send_the_next_request_at_once(tmp_path, monkeypatch) -> None:
    """The gateway counts a request out of flight before its answer leaves: two clients at the limit (2 in flight),
    each sending its next request the moment it has an answer, never see a 429, however slowly the gateway's
    thread gets round to its bookkeeping."""
    import threading

    from phi3course.endpoint import free_port
    from phi3course.rehearsal.gateway import Gateway, GatewaySettings
    from tests.fake_endpoint import FakeEndpoint

    release = Gateway.release

    def slow_release(self: Gateway) -> None:
        time.sleep(0.3)  # a gateway thread that is slow to run again after its answer is written
        release(self)

    monkeypatch.setattr(Gateway, "release", slow_release)
    (tmp_path / "key").write_text("k")
    with FakeEndpoint() as upstream:  # the scoring container: answers at once
        settings = GatewaySettings("d", free_port(), upstream.server.server_address[1], (str(tmp_path / "key"),))
        assert settings.max_in_flight == 2
        gateway = Gateway(settings)
        threading.Thread(target=gateway.serve_forever, daemon=True).start()
        try:

            def client(_: int) -> list[int]:  # a new connection each time, as requests.post makes (a kept-alive
                url = f"http://127.0.0.1:{settings.port}/score"  # one waits for the same gateway thread)
                body, auth = {"input_data": []}, {"Authorization": "Bearer k"}
                return [requests.post(url, json=body, headers=auth).status_code for _ in range(3)]

            with ThreadPoolExecutor(2) as pool:
                statuses = [status for answers in pool.map(client, range(2)) for status in answers]
        finally:
            gateway.shutdown()
            gateway.server_close()
    assert statuses == [200] * 6
