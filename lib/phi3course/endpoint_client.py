"""One request to an endpoint, retried the way Azure ML's gateway asks: the course's clients all send through here.

A managed online endpoint's gateway answers **429** when more requests are in flight than the deployment takes
(about 2 × ``max_concurrent_requests_per_instance`` × instances), **408** when a request runs past
``request_timeout_ms``, and **503**/**502** while the scoring container is busy or restarting. Each of these, and a
client-side timeout or a connection dropped mid-request, says "try again later": :func:`post` waits (exponential
backoff with jitter, or the ``Retry-After`` the endpoint sent) and tries again, a bounded number of times within a
total deadline, then raises :class:`EndpointBusyError` saying what to change. Any other answer — 400, 401, 413:
the request itself is wrong, and sending it again changes nothing — comes back at once for the caller to explain.
A refused connection (nothing listens: the endpoint is down) is not retried either.

How many requests to have in flight in the first place is the endpoint's business: ``endpoint.in_flight``.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests

RETRIED = {
    429: "too many requests in flight",
    408: "the request ran past the deployment's request_timeout_ms",
    503: "the scoring container is busy",
    502: "the scoring container is restarting",
}


# Seconds one attempt waits for its answer: a little over the longest request_timeout_ms Azure allows (180 s), so that
# the gateway's 408 reaches the client instead of the client giving up on work the worker is still doing.
REQUEST_TIMEOUT_S = 200.0


# The chat history sent with a question: about 500 tokens of English (~4 characters a token), half the endpoint's
# 1,024-token prompt, so that a long chat keeps being answered from its newest turns.
HISTORY_CHARS = 2000
Message = TypeVar("Message")


def newest_turns(
    turns: Sequence[list[Message]], size: Callable[[Message], int], budget: int = HISTORY_CHARS
) -> list[Message]:
    """The messages of the newest whole turns whose ``size`` adds up to at most ``budget``, oldest dropped first, in
    order: a long chat would otherwise grow past the endpoint's prompt limit and every later question be refused."""
    recent: list[Message] = []
    used = 0
    for turn in reversed(turns):
        length = sum(size(message) for message in turn)
        if used + length > budget:
            break
        recent[:0] = turn
        used += length
    return recent


class EndpointBusyError(RuntimeError):
    """The endpoint kept answering "later" until the attempts or the deadline ran out; the message says what to do."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: ``attempts`` requests at most, all within ``deadline_s`` seconds.

    The wait before retry n (1, 2, …) is ``base_delay_s × 2^(n-1)``, at most ``max_delay_s``, of which a random
    half is jitter (clients that were refused together do not come back together), unless the endpoint sent
    ``Retry-After``: then exactly that.
    """

    attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    deadline_s: float = 600.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts={self.attempts}: at least 1 (one request, no retry).")
        if min(self.base_delay_s, self.max_delay_s) < 0 or self.deadline_s <= 0:
            raise ValueError("base_delay_s and max_delay_s are seconds (0 or more), deadline_s more than 0.")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first) when the endpoint said nothing."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


DEFAULT_POLICY = RetryPolicy()


def retry_after(response: requests.Response) -> float | None:
    """The wait the response asks for in ``Retry-After`` (seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: fall back to the backoff
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _refused(error: requests.ConnectionError) -> bool:
    """Whether nothing listens at the address (the endpoint is down), as opposed to a connection dropped mid-way."""
    from urllib3.exceptions import NewConnectionError

    reason = getattr(error.args[0], "reason", None) if error.args else None  # requests wraps urllib3's MaxRetryError
    return isinstance(reason, NewConnectionError)


def _busy(url: str, attempts: int, seconds: float, last: str) -> str:
    """What to do about an endpoint that kept saying "later": fewer requests at once, a bigger deployment, its logs."""
    return (
        f"The endpoint {url} is still busy after {attempts} attempt(s) in {seconds:.0f} s (last: {last}). "
        "Send fewer requests at once (endpoint.in_flight(run) gives the endpoint's limit; PF_WORKER_COUNT, the "
        "thread pool or the semaphore must not exceed it), or let the deployment take more: raise its "
        "max_concurrent_requests_per_instance or instance_count (03_deploy). If it stays busy, read the "
        "deployment's logs: ml_client.online_deployments.get_logs(name=..., endpoint_name=...) on Azure ML, "
        "<run>/tuned.log locally."
    )


def post(
    url: str,
    *,
    json: Any,
    headers: dict[str, str],
    timeout_s: float,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> requests.Response:
    """POST ``json`` to ``url``, retrying what :data:`RETRIED` lists and client timeouts or dropped connections.

    Returns the first response whose status is not retried (200, or 400/401/413/… for the caller to explain);
    raises :class:`EndpointBusyError` when ``policy``'s attempts or deadline run out, and ``requests.ConnectionError``
    at once when nothing listens at ``url``. Each attempt waits at most ``timeout_s`` and no longer than the time
    left before the deadline.
    """
    began = time.monotonic()
    sent, last = 0, ""
    while sent < policy.attempts:
        left = policy.deadline_s - (time.monotonic() - began)
        wait_s = min(timeout_s, left)
        sent += 1
        try:
            response = requests.post(url, json=json, headers=headers, timeout=wait_s)
        except requests.Timeout:
            last, asked = f"no answer within {wait_s:.3g} s", None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            if isinstance(error, requests.ConnectionError) and _refused(error):
                raise
            last, asked = "the connection was dropped", None
        else:
            if response.status_code not in RETRIED:
                return response
            last, asked = f"HTTP {response.status_code}, {RETRIED[response.status_code]}", retry_after(response)
        if sent == policy.attempts:
            break
        pause = asked if asked is not None else policy.backoff(sent)
        if time.monotonic() - began + pause >= policy.deadline_s:
            last += f"; waiting {pause:.0f} s more would pass the {policy.deadline_s:.0f} s deadline"
            break
        time.sleep(pause)
    raise EndpointBusyError(_busy(url, sent, time.monotonic() - began, last))
