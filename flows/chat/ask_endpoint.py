"""The flow's one tool: send the conversation to the endpoint in the scoring contract of 03_deploy."""

import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool


class EndpointCallError(RuntimeError):
    """The endpoint could not answer; the message says what to check."""


def to_messages(question: str, chat_history: list) -> list:
    """Prompt flow's chat history (turns of inputs and outputs) and the new question, as chat messages."""
    messages = []
    for turn in chat_history or []:
        messages.append({"role": "user", "content": str(turn["inputs"]["question"])})
        messages.append({"role": "assistant", "content": str(turn["outputs"]["answer"])})
    messages.append({"role": "user", "content": question})
    return messages


@tool
def ask_endpoint(connection: CustomConnection, question: str, chat_history: list = None, max_new_tokens: int = 128) -> str:
    # Prompt flow reads this signature's annotations to resolve the connection: no `from __future__
    # import annotations` here, and no union types.
    if not question or not question.strip():
        raise ValueError("The question is empty: type a question for the model.")
    url = connection.configs["endpoint"]
    timeout = float(connection.configs.get("timeout", 120))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {connection.secrets['key']}"}
    payload = {
        "input_data": [to_messages(question.strip(), chat_history or [])],
        "params": {"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False},
    }
    try:
        response = requests.post(url, json=payload, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise EndpointCallError(f"The endpoint {url} did not answer within {timeout:.0f} s: is it overloaded?") from None
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
    if response.status_code != 200:
        raise EndpointCallError(f"The endpoint {url} answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json()[0]
