"""The endpoint load test (``make bench`` and tests): concurrent clients, latency percentiles, throughput.

Not part of the package learners import: notebook 03 sends its requests with ``requests``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from phi3course.endpoint import LocalEndpoint


@dataclass
class LoadResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, float]:
        return {
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 2),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
        }


def measure(
    endpoint: LocalEndpoint, payloads: list[Any], clients: int, per_client: int, timeout: float = 300
) -> LoadResult:
    """``clients`` concurrent clients each send ``per_client`` requests (bounded in count and time)."""
    headers = endpoint.headers()

    def client(index: int) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with requests.Session() as session:
            for n in range(per_client):
                payload = payloads[(index * per_client + n) % len(payloads)]
                began = time.perf_counter()
                try:
                    response = session.post(endpoint.scoring_uri, json=payload, headers=headers, timeout=timeout)
                    ok = response.status_code == 200 and isinstance(response.json(), list)
                except (requests.RequestException, json.JSONDecodeError):
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - began) * 1000)
                else:
                    errors += 1
        return latencies, errors

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - began
    latencies = [ms for lat, _ in results for ms in lat]
    return LoadResult(clients, clients * per_client, sum(e for _, e in results), seconds, latencies)
