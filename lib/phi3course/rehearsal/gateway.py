"""Azure's gateway in front of a rehearsed deployment: what a managed online endpoint does before the scoring container
sees a request, as Microsoft Learn's "Troubleshoot online endpoints" (HTTP status codes) describes it.

- **401** without ``Authorization: Bearer <key>`` for one of the endpoint's two keys (``key_auth_bad_header_forbidden``
  when the header is missing or not a Bearer one, ``key_auth_access_denied`` when the key is wrong, as Azure words it);
- **429** "Too many pending requests" beyond ``2 × max_concurrent_requests_per_instance × instance_count`` requests in
  flight: the request is refused at once, not queued;
- **408** "Request timeout" when the answer takes longer than ``request_timeout_ms`` (waiting for a busy worker counts);
- **503** when the scoring container does not take the connection (not running), **502** when it breaks off;
- otherwise the request goes to the container as it came — but for its ``Authorization`` header: the container never
  sees the endpoint's keys (the gateway sends the deployment's own key, which the scoring script checks here), so
  either endpoint key works end to end and a regenerated key needs no restart — and its answer back, with the
  ``azureml-model-deployment`` header naming the deployment that answered.

A :class:`Gateway` runs alone on 127.0.0.1 (``python -m phi3course.rehearsal gateway <config>``), one per deployment,
started and stopped with it (:mod:`.endpoints`); its settings are a JSON file beside the deployment.
"""

from __future__ import annotations

import hmac
import http.client
import json
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .common import HOST, RehearsalError

# Azure's defaults and bounds for request_settings (the deployment YAML reference, azure-ai-ml's OnlineRequestSettings).
DEFAULT_MAX_CONCURRENT = 1
DEFAULT_REQUEST_TIMEOUT_MS = 5000
MAX_REQUEST_TIMEOUT_MS = 180000
PENDING_PER_CONCURRENT = 2  # the gateway takes 2 × max_concurrent_requests_per_instance × instance_count at once
START_TIMEOUT_S = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class GatewaySettings:
    """What one deployment's gateway enforces, and where it listens and forwards to."""

    deployment: str
    port: int
    upstream_port: int
    key_files: tuple[str, ...]  # the endpoint's primary and secondary keys: either one is accepted
    max_concurrent_requests_per_instance: int = DEFAULT_MAX_CONCURRENT
    instance_count: int = 1
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    container_key_file: str = ""  # the deployment's own key, sent to the scoring container ("": the request's header)

    @property
    def max_in_flight(self) -> int:
        return PENDING_PER_CONCURRENT * self.max_concurrent_requests_per_instance * self.instance_count

    @classmethod
    def of(cls, deployment: Any, port: int, upstream_port: int, key_files: list[Path]) -> GatewaySettings:
        """The settings of ``deployment`` (a ManagedOnlineDeployment), with Azure's defaults for what it leaves out;
        a value Azure refuses raises RehearsalError naming the fix."""
        request = deployment.request_settings
        concurrent = getattr(request, "max_concurrent_requests_per_instance", None) or DEFAULT_MAX_CONCURRENT
        timeout_ms = getattr(request, "request_timeout_ms", None) or DEFAULT_REQUEST_TIMEOUT_MS
        if not 1 <= timeout_ms <= MAX_REQUEST_TIMEOUT_MS:
            raise RehearsalError(
                f"request_settings.request_timeout_ms={timeout_ms}: Azure allows at most {MAX_REQUEST_TIMEOUT_MS} "
                "(3 minutes). Make a request do less (fewer tokens, a smaller batch) or let the client send several."
            )
        if concurrent < 1:
            raise RehearsalError(f"request_settings.max_concurrent_requests_per_instance={concurrent}: at least 1.")
        return cls(
            deployment=deployment.name,
            port=port,
            upstream_port=upstream_port,
            key_files=tuple(str(p) for p in key_files),
            max_concurrent_requests_per_instance=int(concurrent),
            instance_count=int(deployment.instance_count or 1),
            request_timeout_ms=int(timeout_ms),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> GatewaySettings:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, "key_files": tuple(data["key_files"])})


class Gateway(ThreadingHTTPServer):
    """The gateway's HTTP server: one thread per request, a count of those in flight."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__((HOST, settings.port), _Handler)
        self.settings = settings
        self._in_flight = 0
        self._lock = threading.Lock()

    def refusal(self, authorization: str | None) -> str | None:
        """Why the key check fails (Azure's word for it), or None when the request carries one of the keys."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "key_auth_bad_header_forbidden"
        keys = [Path(p).read_text(encoding="utf-8").strip() for p in self.settings.key_files if Path(p).is_file()]
        if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in keys if k):
            return "key_auth_access_denied"
        return None

    def admit(self) -> bool:
        with self._lock:
            if self._in_flight >= self.settings.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        began = time.monotonic()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        settings = self.server.settings
        if refusal := self.server.refusal(self.headers.get("Authorization")):
            return self._reply(401, refusal)
        if not self.server.admit():
            return self._reply(
                429,
                f"Too many pending requests: the deployment {settings.deployment} takes {settings.max_in_flight} at "
                f"once ({PENDING_PER_CONCURRENT} × max_concurrent_requests_per_instance "
                f"{settings.max_concurrent_requests_per_instance} × "
                f"instance_count {settings.instance_count}) and refuses the rest. Send fewer at once, or retry after "
                "a pause that grows each time (exponential backoff).",
            )
        self._holding = True  # released before the answer is written (see _end), or here if it never is
        try:
            self._forward(body, began + settings.request_timeout_ms / 1000)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Leave the count of requests in flight, once: a client that has its answer may send the next request at
        once, and the gateway must not count the finished one against it."""
        if getattr(self, "_holding", False):
            self._holding = False
            self.server.release()

    def _forward(self, body: bytes, deadline: float) -> None:
        settings = self.server.settings
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        if settings.container_key_file:  # the container gets the deployment's key, never the endpoint's
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            key = Path(settings.container_key_file).read_text(encoding="utf-8").strip()
            headers["Authorization"] = f"Bearer {key}"

        def left() -> float:
            return max(deadline - time.monotonic(), 0.01)

        upstream = http.client.HTTPConnection(HOST, settings.upstream_port, timeout=left())
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            if upstream.sock is not None:
                upstream.sock.settimeout(left())  # the whole request, waiting for a worker included
            answer = upstream.getresponse()
            payload = answer.read()
        except TimeoutError:
            return self._reply(
                408,
                f"Request timeout: the model took longer than request_timeout_ms ({settings.request_timeout_ms} ms, "
                "under request_settings of the deployment); time spent waiting for a busy worker counts.",
            )
        except ConnectionRefusedError:
            return self._reply(
                503, f"The scoring container of deployment {settings.deployment} is not running: see get_logs()."
            )
        except (OSError, http.client.HTTPException) as error:
            return self._reply(
                502, f"The scoring container of deployment {settings.deployment} broke off the request ({error})."
            )
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                self.send_header(name, value)
        self._end(payload)

    def _reply(self, status: int, message: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self._end(message.encode())

    def _end(self, payload: bytes) -> None:
        self._let_go()
        self.send_header("azureml-model-deployment", self.server.settings.deployment)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # one line per request, never a header (the key)
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")


def serve(config: str | Path) -> int:
    """``python -m phi3course.rehearsal gateway <config>``: serve until ended (SIGTERM)."""
    settings = GatewaySettings.read(config)
    with Gateway(settings) as gateway:
        print(
            f"gateway for {settings.deployment} on {HOST}:{settings.port} → {HOST}:{settings.upstream_port}: at most "
            f"{settings.max_in_flight} requests in flight, {settings.request_timeout_ms} ms each",
            flush=True,
        )
        gateway.serve_forever()
    return 0


def wait_listening(process: Any, port: int, log_path: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until the gateway takes connections on ``port``; RehearsalError with its log if it exits or stays shut."""
    from ..processes import log_tail

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RehearsalError(f"the gateway exited with code {process.returncode}. Log:\n{log_tail(log_path)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RehearsalError(f"the gateway did not listen on {HOST}:{port} within {timeout_s:.0f} s:\n{log_tail(log_path)}")
