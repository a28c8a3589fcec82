"""The flow's one tool: send the conversation to the endpoint in the scoring contract of 03_deploy.

The endpoint's rules that the tool can check before sending, it checks (a clear error, nothing sent): the question
is text, not empty, valid Unicode and at most MAX_QUESTION_CHARS characters (the endpoint refuses a longer prompt).
Turns of the history with an empty answer are sent as the question alone (the endpoint refuses empty messages).
What only the endpoint knows (its model's control tokens, its token limit) comes back as its 400 message.
When the endpoint says "later" (429, 408, 502, 503, no answer in time), the course's retry policy waits and asks
again (``phi3course.endpoint_client``); a batch run keeps its workers (``PF_WORKER_COUNT``) within what the
endpoint takes at once (``phi3course.endpoint.in_flight``).
"""

import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool

from phi3course.endpoint_client import (
    DEFAULT_POLICY,
    HISTORY_CHARS,
    REQUEST_TIMEOUT_S,
    EndpointBusyError,
    newest_turns,
    post,
)

MAX_QUESTION_CHARS = 8192  # the endpoint's limit for one prompt (score.py's MAX_PROMPT_CHARS: 8 per allowed token)
RETRY = DEFAULT_POLICY  # attempts, backoff and deadline for an endpoint that answers "later"


class EndpointCallError(RuntimeError):
    """The endpoint could not answer; the message says what to check."""


def check_question(question) -> str:
    """The question, stripped, or a ValueError that says what to fix."""
    if not isinstance(question, str):
        raise ValueError(f"The question must be text, not {type(question).__name__}.")
    if not question.strip():
        raise ValueError("The question is empty: type a question for the model.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(
            f"The question is {len(question)} characters; the endpoint takes at most {MAX_QUESTION_CHARS}: "
            "shorten it."
        )
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"The question is not valid Unicode (a lone surrogate at character {error.start}): retype it."
        ) from None
    return question.strip()


def to_messages(question: str, chat_history: list, history_chars: int = HISTORY_CHARS) -> list:
    """Prompt flow's chat history (turns of inputs and outputs) and the new question, as chat messages.

    A turn whose question or answer is empty (a model may answer nothing) keeps only what it has. Only the newest
    turns that fit in ``history_chars`` characters are sent (``endpoint_client.newest_turns``)."""
    turns = []
    for turn in chat_history or []:
        kept = []
        for role, text in (("user", turn["inputs"]["question"]), ("assistant", turn["outputs"]["answer"])):
            if text is not None and str(text).strip():
                kept.append({"role": role, "content": str(text)})
        turns.append(kept)
    recent = newest_turns(turns, lambda message: len(message["content"]), history_chars)
    return [*recent, {"role": "user", "content": question}]


@tool
def ask_endpoint(connection: CustomConnection, question: str, chat_history: list = None, max_new_tokens: int = 128) -> str:
    # Prompt flow reads this signature's annotations to resolve the connection: no `from __future__
    # import annotations` here, and no union types.
    question = check_question(question)
    url = connection.configs["endpoint"]
    timeout = float(connection.configs.get("timeout", REQUEST_TIMEOUT_S))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {connection.secrets['key']}"}
    payload = {
        "input_data": [to_messages(question, chat_history or [])],
        "params": {"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False},
    }
    try:
        response = post(url, json=payload, headers=headers, timeout_s=timeout, policy=RETRY)
    except EndpointBusyError as error:
        raise EndpointCallError(str(error)) from None
    except requests.ConnectionError:
        raise EndpointCallError(
            f"The endpoint {url} is not reachable: start it (notebook 03_deploy) or fix the connection's endpoint."
        ) from None
    if response.status_code == 401:
        raise EndpointCallError(
            f"The endpoint {url} refused the key (401): recreate the connection from the run directory "
            "(04_prompt_flow_chat), or fetch the endpoint's current key."
        )
    if response.status_code == 400:
        raise EndpointCallError(f"The endpoint refused the request (400): {response.json().get('error')}")
    if response.status_code == 413:
        raise EndpointCallError(
            "The endpoint refused the request as too large (413): shorten the question or start a new chat."
        )
    if response.status_code != 200:
        raise EndpointCallError(f"The endpoint {url} answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json()[0]
