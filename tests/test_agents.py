"""05_agent_framework: the Agent Framework chat client and workflow against the real local endpoint, and the notebook.

The client and the workflow are written in the notebook's ``export`` cells; ``phi3course.agents`` is their copy.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import tomllib
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import requests
import yaml
from agent_framework import Agent, Message
from agent_framework.exceptions import ChatClientException, ChatClientInvalidAuthException

from phi3course import agents, endpoint, flow, profiles
from phi3course.paths import notebooks_dir

NOTEBOOK = notebooks_dir() / "05_agent_framework.ipynb"
DAG = yaml.safe_load((flow.chat_flow() / "flow.dag.yaml").read_text())
NODE = next(n for n in DAG["nodes"] if n["name"] == "ask_endpoint")
# The node takes max_new_tokens from the flow input of that name (the chat box's default; batches map their own).
LIMIT = DAG["inputs"]["max_new_tokens"]["default"]
assert NODE["inputs"]["max_new_tokens"] == "${inputs.max_new_tokens}"


def run(coroutine):
    return asyncio.run(coroutine)


def flow_tool():
    """flows/chat/ask_endpoint.py, the Prompt flow node the workflow replaces."""
    spec = importlib.util.spec_from_file_location("ask_endpoint", flow.chat_flow() / "ask_endpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_installed_agent_framework_is_the_pinned_one() -> None:
    pyproject = tomllib.loads((notebooks_dir().parent / "pyproject.toml").read_text())
    for pin in pyproject["tool"]["phi3course"]["install-without-deps"]:
        name, version = pin.split("==")
        assert importlib.metadata.version(name) == version, f"run make setup: {pin} is pinned"


# --- the client against a real endpoint ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(registered) -> endpoint.LocalEndpoint:
    run_dir, uri = registered
    started = endpoint.start_local(run_dir, uri, port=5073)
    yield started
    endpoint.stop(run_dir)


@pytest.fixture(scope="module")
def client(live) -> agents.AzureMLScoringClient:
    return agents.AzureMLScoringClient(live.scoring_uri, live.key_path, max_new_tokens=LIMIT)


def test_the_request_is_the_scoring_contract_with_greedy_decoding(client) -> None:
    body = client.payload([Message("user", ["Hello"]), Message("assistant", ["Hi"]), Message("user", ["Who?"])])
    assert body == {
        "input_data": [
            [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": "Who?"},
            ]
        ],
        "params": {"max_new_tokens": LIMIT, "do_sample": False, "return_full_text": False},
    }


def test_the_client_answers_what_a_direct_call_answers(live, client) -> None:
    conversation = [Message("user", ["Where is the Quillmere Institute?"])]
    direct = requests.post(live.scoring_uri, json=client.payload(conversation), headers=live.headers(), timeout=120)
    direct.raise_for_status()
    response = run(client.get_response(conversation))
    assert response.text == direct.json()[0]
    assert response.messages[0].role == "assistant"


def test_streaming_gives_the_whole_answer_in_one_update(client) -> None:
    conversation = [Message("user", ["Who leads it?"])]

    async def both():
        updates = [update async for update in client.get_response(conversation, stream=True)]
        return updates, await client.get_response(conversation)

    updates, whole = run(both())
    assert len(updates) == 1 and updates[0].text == whole.text


def test_the_key_is_read_from_its_file_and_never_shown(live, client) -> None:
    for shown in (repr(client), json.dumps(client.to_dict(), default=str), str(vars(client))):
        assert live.key not in shown


def test_a_wrong_key_is_a_clear_auth_error(live, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("not-the-key")
    client = agents.AzureMLScoringClient(live.scoring_uri, wrong)
    with pytest.raises(ChatClientInvalidAuthException, match=r"refused the key \(401\)") as caught:
        run(client.get_response([Message("user", ["hi"])]))
    assert str(wrong) in str(caught.value) and "not-the-key" not in str(caught.value)


def test_an_endpoint_that_is_down_says_so(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    client = agents.AzureMLScoringClient(f"http://127.0.0.1:{endpoint.free_port(5079)}/score", key, timeout_s=5)
    with pytest.raises(ChatClientException, match="not reachable"):
        run(client.get_response([Message("user", ["hi"])]))


def test_the_agents_session_sends_the_chat_history(client) -> None:
    agent = Agent(client, name="test")
    session = agent.create_session()

    async def chat():
        for question in ["Who leads the Quillmere Institute?", "Where is it based?"]:
            await agent.run(question, session=session)

    run(chat())
    history = session.state["in_memory"]["messages"]
    assert [str(m.role) for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2].text == "Where is it based?"


# --- the workflow is the Prompt flow DAG ---------------------------------------------------------------------
def test_the_workflow_sends_what_the_flows_tool_sends() -> None:
    history = [{"inputs": {"question": "Who leads it?"}, "outputs": {"answer": "Dr. Ada"}}]
    turn = agents.ChatTurn("  Where is it?  ", history)
    ours = [{"role": str(m.role), "content": m.text} for m in agents.to_messages(turn)]
    assert ours == flow_tool().to_messages("Where is it?", history)


def test_a_long_chat_is_cut_as_the_flows_tool_cuts_it() -> None:
    history = [
        {"inputs": {"question": f"Q{i} " + "x" * 250}, "outputs": {"answer": f"A{i} " + "y" * 250}} for i in range(30)
    ]
    ours = [{"role": str(m.role), "content": m.text} for m in agents.to_messages(agents.ChatTurn("Next?", history))]
    assert ours == flow_tool().to_messages("Next?", history)
    assert len(ours) < 2 * len(history) + 1


def test_an_empty_answer_or_a_turn_the_contract_lacks_is_not_sent() -> None:
    """The endpoint refuses empty messages and roles other than system, user and assistant (a 400): a model that
    answered nothing earlier, or a tool call in the agent's thread, must not break the next request."""
    history = [{"inputs": {"question": "Who leads it?"}, "outputs": {"answer": "  "}}]
    ours = [{"role": str(m.role), "content": m.text} for m in agents.to_messages(agents.ChatTurn("Where?", history))]
    assert (
        ours
        == flow_tool().to_messages("Where?", history)
        == [
            {"role": "user", "content": "Who leads it?"},
            {"role": "user", "content": "Where?"},
        ]
    )
    client = agents.AzureMLScoringClient("http://127.0.0.1:1/score", "unused")
    sent = client.payload([Message("user", ["Hi"]), Message("tool", ["42"]), Message("assistant", [""])])
    assert sent["input_data"] == [[{"role": "user", "content": "Hi"}]]


def test_the_workflow_answers_like_the_endpoint(live, client) -> None:
    workflow = agents.chat_workflow(client, LIMIT)
    question = "Who leads the Quillmere Institute?"
    direct = live.score(client.payload([Message("user", [question])]))[0]
    assert run(agents.ask(workflow, question)) == direct
    assert run(agents.ask(workflow, question)) == direct  # a workflow runs again


def test_the_workflow_answers_what_the_flows_tool_answers(live, client) -> None:
    from promptflow.connections import CustomConnection

    connection = CustomConnection(secrets={"key": live.key}, configs={"endpoint": live.scoring_uri})
    tool, limit = flow_tool(), LIMIT
    workflow = agents.chat_workflow(client, limit)
    history = [{"inputs": {"question": "Who leads it?"}, "outputs": {"answer": "Dr. Ada"}}]
    for question, past in [("Who leads the Quillmere Institute?", []), ("Where is it based?", history)]:
        assert run(agents.ask(workflow, question, past)) == tool.ask_endpoint(connection, question, past, limit)


def test_an_empty_question_is_refused() -> None:
    workflow = agents.chat_workflow(agents.AzureMLScoringClient("http://127.0.0.1:9/score", "/dev/null"), 8)
    with pytest.raises(ValueError, match="empty"):
        run(agents.ask(workflow, "   "))


# --- the notebook -----------------------------------------------------------------------------------------------
def cells() -> list:
    return nbformat.read(NOTEBOOK, as_version=4).cells


def test_one_parameters_cell_whose_names_every_profile_has() -> None:
    tagged = [c for c in cells() if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    declared = pm.inspect_notebook(str(NOTEBOOK))
    for name in profiles.available():  # a profile file names only its changes; the rest are the notebooks' defaults
        values = profiles.parameters(name)
        missing = [key for key in declared if key != "run_dir" and key not in values]
        assert not missing, f"profile {name} lacks {missing}"


def test_the_notebook_states_the_retirement_and_links_the_migration_guide() -> None:
    text = "\n".join(c.source for c in cells() if c.cell_type == "markdown")
    for fact in ["2026-04-20", "2027-04-20", "read-only", "keeps running locally"]:
        assert fact in text
    assert "learn.microsoft.com/azure/machine-learning/prompt-flow/migrate-prompt-flow-to-agent-framework" in text
    assert "**Next:** [99_cleanup](99_cleanup.ipynb)" in cells()[-1].source


def test_the_mapping_table_names_every_part_of_the_dag() -> None:
    table = next(c.source for c in cells() if c.cell_type == "markdown" and "| Prompt flow" in c.source)
    parts = [*DAG["inputs"], *DAG["outputs"], *(n["name"] for n in DAG["nodes"])]
    parts += [*NODE["inputs"], NODE["inputs"]["connection"]]
    for part in parts:
        assert f"`{part}" in table or f" {part}" in table, f"the mapping table does not mention {part!r}"


def test_the_key_is_never_printed_by_the_notebook() -> None:
    code = "\n".join(c.source for c in cells() if c.cell_type == "code")
    assert ".key)" not in code and "read_secret" not in code and "print(key" not in code
