"""Microsoft Agent Framework over the course's endpoint: a chat client for Azure ML's scoring contract, and the
chat flow of 04 (``flows/chat/flow.dag.yaml``) as a workflow.

The block between the markers is generated from ``notebooks/05_agent_framework.ipynb``, from its cells tagged
``export`` (the d2l pattern: the notebook is the source the learner reads and edits; the benchmark and the tests
import this copy). Edit the notebook, then run ``python -m phi3course.tools.export`` to regenerate the block;
``tests/test_agents.py`` fails while the two differ.
"""

# --- generated from notebooks/05_agent_framework.ipynb (cells tagged "export"): edit the notebook, not this ---
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Never

import requests
from agent_framework import (
    BaseChatClient,
    ChatResponse,
    ChatResponseUpdate,
    Executor,
    Message,
    Workflow,
    WorkflowBuilder,
    WorkflowContext,
    handler,
)
from agent_framework.exceptions import (
    ChatClientException,
    ChatClientInvalidAuthException,
    ChatClientInvalidRequestException,
)

from phi3course.endpoint_client import (
    DEFAULT_POLICY,
    REQUEST_TIMEOUT_S,
    EndpointBusyError,
    RetryPolicy,
    newest_turns,
    post,
)


class AzureMLScoringClient(BaseChatClient):
    """A chat client for an Azure ML online endpoint that speaks the scoring contract of 03_deploy.

    The endpoint is not OpenAI-compatible: it takes ``{"input_data": [[{role, content}, ...]], "params": {...}}``
    with a Bearer key and answers a JSON list of strings, one per conversation.
    """

    OTEL_PROVIDER_NAME = "azure.ml"  # how Agent Framework's traces name the provider

    def __init__(
        self,
        scoring_uri: str,
        key_path: str | Path,
        *,
        max_new_tokens: int = 128,
        timeout_s: float = REQUEST_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_POLICY,
    ):
        super().__init__()
        self.scoring_uri = scoring_uri
        self.key_path = Path(key_path)  # the key stays in its file: read per request, never kept or printed
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s  # for one attempt
        self.retry = retry  # when the endpoint answers "later" (429, 408, 502, 503): how often, how long to wait

    def _inner_get_response(self, *, messages: Sequence[Message], stream: bool, options: Mapping[str, Any], **kwargs):
        """The one method a chat client must implement; Agent Framework calls it for agents and workflows alike."""
        if not stream:
            return self._score(messages, options)

        async def one_update():  # the endpoint does not stream: one update carries the whole answer
            response = await self._score(messages, options)
            yield ChatResponseUpdate(role="assistant", contents=response.messages[0].contents)

        return self._build_response_stream(one_update())

    @staticmethod
    def sendable(message: Message) -> bool:
        """What the scoring contract takes: system, user and assistant turns with text (a tool call has none)."""
        return str(message.role) in {"system", "user", "assistant"} and bool((message.text or "").strip())

    def payload(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> dict[str, Any]:
        """The request body: one conversation, greedy decoding (the same answer every time)."""
        return {
            "input_data": [[{"role": str(m.role), "content": m.text} for m in messages if self.sendable(m)]],
            "params": {
                "max_new_tokens": max_new_tokens or self.max_new_tokens,
                "do_sample": False,
                "return_full_text": False,
            },
        }

    async def _score(self, messages: Sequence[Message], options: Mapping[str, Any]) -> ChatResponse:
        options = await self._validate_options(options)
        body = self.payload(messages, options.get("max_tokens"))
        headers = {"Authorization": f"Bearer {self.key_path.read_text(encoding='utf-8').strip()}"}
        try:  # requests blocks (and the retries wait): run it in a thread so the agent's event loop stays free
            response = await asyncio.to_thread(
                post, self.scoring_uri, json=body, headers=headers, timeout_s=self.timeout_s, policy=self.retry
            )
        except EndpointBusyError as error:  # still 429/408/502/503 or no answer after the policy's last attempt
            raise ChatClientException(str(error)) from None
        except requests.ConnectionError:
            raise ChatClientException(
                f"The endpoint {self.scoring_uri} is not reachable: start it (03_deploy) or check the scoring URI."
            ) from None
        if response.status_code == 401:
            raise ChatClientInvalidAuthException(
                f"The endpoint {self.scoring_uri} refused the key (401): the key file {self.key_path} does not hold "
                "this endpoint's current key; rerun 03_deploy (local) or fetch the key again (Azure)."
            )
        if response.status_code == 400:
            raise ChatClientInvalidRequestException(f"The endpoint refused the request (400): {response.text[:300]}")
        if response.status_code != 200:
            raise ChatClientException(f"The endpoint answered HTTP {response.status_code}: {response.text[:300]}")
        answer = response.json()[0]
        return ChatResponse(messages=[Message("assistant", [answer])], model=self.scoring_uri)


@dataclass
class ChatTurn:
    """The flow's inputs: ``question`` (chat input) and ``chat_history`` (Prompt flow's turns of inputs/outputs)."""

    question: str
    chat_history: list[dict[str, Any]] = field(default_factory=list)


def to_messages(turn: ChatTurn) -> list[Message]:
    """Prompt flow's chat history and the new question, as Agent Framework messages (as ask_endpoint.py does)."""
    turns = []
    for past in turn.chat_history:  # a turn whose answer is empty (a model may answer nothing) keeps its question
        said = [
            (role, str(text))
            for role, text in (("user", past["inputs"]["question"]), ("assistant", past["outputs"]["answer"]))
        ]
        turns.append([Message(role, [text]) for role, text in said if text.strip()])  # no empty messages
    recent = newest_turns(turns, lambda message: len(message.text))  # a long chat stays answerable
    return [*recent, Message("user", [turn.question.strip()])]


class AskEndpoint(Executor):
    """The flow's python node ``ask_endpoint``: the conversation in, the endpoint's answer out."""

    def __init__(self, client: BaseChatClient, max_new_tokens: int, id: str = "ask_endpoint"):
        super().__init__(id=id)
        self.client = client  # plays the flow's connection: where the endpoint is and where its key is kept
        self.max_new_tokens = max_new_tokens  # the node's max_new_tokens input

    @handler
    async def ask(self, turn: ChatTurn, ctx: WorkflowContext[Never, str]) -> None:
        if not turn.question or not turn.question.strip():
            raise ValueError("The question is empty: type a question for the model.")
        response = await self.client.get_response(to_messages(turn), options={"max_tokens": self.max_new_tokens})
        await ctx.yield_output(response.text)  # the flow's output `answer`


def chat_workflow(client: BaseChatClient, max_new_tokens: int) -> Workflow:
    """flows/chat/flow.dag.yaml as a workflow: inputs → ask_endpoint → answer."""
    return WorkflowBuilder(start_executor=AskEndpoint(client, max_new_tokens), name="chat").build()


async def ask(workflow: Workflow, question: str, chat_history: list[dict[str, Any]] | None = None) -> str:
    """One run of the workflow, like ``pf flow test``: the question in, the answer out."""
    result = await workflow.run(ChatTurn(question, chat_history or []))
    return result.get_outputs()[0]


# --- end of generated code ---
