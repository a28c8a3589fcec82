"""The workspace's MLflow as a job sees it: a tracking server over HTTP that answers as Azure ML's does.

A job on Azure ML reaches the workspace's MLflow through azureml-mlflow, which speaks MLflow's REST API to Azure
ML's own tracking server. That server implements the runs, metrics, params and artifacts of MLflow 2, but not the
*logged models* MLflow 3 added: ``POST /api/2.0/mlflow/logged-models`` — the first call of every
``mlflow.<flavor>.log_model`` since MLflow 3 — is answered ``404`` with an empty body, so the job fails after
training (Azure/azure-sdk-for-python#44896). Azure's own examples log with ``save_model`` + ``log_artifacts``
instead.

The stand-in imitates exactly that: MLflow's own tracking server app on the workspace's store (``mlflow.db``),
behind a filter that answers every ``logged-models`` route with Azure's empty 404. It runs in the job's supervisor
process for as long as the job runs, on 127.0.0.1, and the job's ``MLFLOW_TRACKING_URI`` points at it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .common import HOST

# The routes Azure ML's tracking server does not implement (MLflow 3's logged models), as the REST and UI APIs name
# them. Anything under them gets Azure's answer: 404, empty body.
REFUSED_ROUTES = ("/api/2.0/mlflow/logged-models", "/ajax-api/2.0/mlflow/logged-models")
WHAT = "Azure ML's tracking server as a job sees it (no MLflow 3 logged models: 404 on logged-models)"


def refuse_logged_models(app: Callable[..., Iterable[bytes]], refused: list[str] | None = None) -> Callable[..., Any]:
    """``app`` (a WSGI app) with Azure's answer to the routes it lacks: ``404`` and an empty body.

    Each refused request is appended to ``refused`` (``"POST /api/2.0/mlflow/logged-models"``) when given.
    """

    def filtered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if any(path == route or path.startswith(route + "/") for route in REFUSED_ROUTES):
            if refused is not None:
                refused.append(f"{environ.get('REQUEST_METHOD', '?')} {path}")
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    return filtered


class TrackingServer:
    """MLflow's tracking server on ``store_uri``, with Azure's 404 on logged models, in a thread of this process.

    Start it in a process that is no MLflow client itself (the job's supervisor, ``python -m phi3course.rehearsal
    tracking-server``): MLflow's server app points this process's own MLflow client at the store directly, past the
    filter. ``artifact_root`` is where experiments created through the server keep their artifacts.
    """

    def __init__(self, store_uri: str, artifact_root: str) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        # MLflow's server app reads its store from these when it first needs it (as `mlflow server` passes them).
        os.environ["_MLFLOW_SERVER_FILE_STORE"] = store_uri
        os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = artifact_root
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.server import app

        self.refused: list[str] = []

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self._server = make_server(
            HOST, 0, refuse_logged_models(app, self.refused), threaded=True, request_handler=Quiet
        )
        self.uri = f"http://{HOST}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="rehearsal-mlflow", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(store_uri: str, artifact_root: str) -> int:
    """``python -m phi3course.rehearsal tracking-server <store> <artifact root>``: print the URI, serve until ended."""
    import signal

    server = TrackingServer(store_uri, artifact_root)
    print(server.uri, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    server.close()
    for line in server.refused:
        print(f"refused (404, as Azure ML): {line}", file=sys.stderr)
    return 0
