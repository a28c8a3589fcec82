"""A scoring endpoint that answers what a test scripts, on 127.0.0.1: Azure's gateway in miniature.

Each request takes the next scripted answer — ``(status, headers, delay_s)``, status 0 for a connection closed
without an answer — and, when the script is used up, a 200 with one answer per conversation after ``work_s``.
It counts requests and the most it ever had in flight.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "The Quillmere Institute is in Lowmarsh."


@dataclass
class Scripted:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class FakeEndpoint:
    def __init__(self, script: list[Scripted] | None = None, work_s: float = 0.0) -> None:
        self.script = list(script or [])
        self.work_s = work_s
        self.requests: list[Any] = []  # the bodies, in order of arrival
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.in_flight += 1
                    fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
                    step = fake.script.pop(0) if fake.script else None
                try:
                    time.sleep(step.delay_s if step else fake.work_s)
                finally:
                    # Out of flight before the answer leaves: once the client has it, its next request may
                    # arrive before this thread runs again, and must not count as overlapping this one.
                    with fake._lock:
                        fake.in_flight -= 1
                try:
                    if step is None:
                        self._send(200, [ANSWER] * len(body["input_data"]), {})
                    elif step.status == 0:
                        self.close_connection = True  # no status line: the client sees the connection dropped
                    else:
                        self._send(step.status, {"error": f"scripted {step.status}"}, step.headers)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeEndpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
