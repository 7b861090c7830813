"""OpenAI's Agents SDK (`openai-agents`, an official agent framework on the official client) running a tool-using
agent against the real SmolLM2 expert, through both of its model adapters (Responses and Chat Completions),
whole and streamed: the SDK sends the tools, reads the model's call (made well-formed by a grammar,
engines/llamacpp/tools.py), runs its Python function with the parsed arguments and takes the result as the run's
final output (`tool_use_behavior="stop_on_first_tool"`, so the run ends whatever this 135M model would say next)."""

from __future__ import annotations

import asyncio

import agents  # openai-agents, a dev dependency (pyproject.toml)
import pytest
from openai import AsyncOpenAI

from switchboard.testing.servers import serve_smol_gateway

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def smol_gateway():
    with serve_smol_gateway(context_tokens=2048) as url:
        yield url


@pytest.mark.parametrize("adapter", ["responses", "chat"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_agent_calls_its_function_tool_through_the_gateway(smol_gateway, adapter, streamed):
    agents.set_tracing_disabled(True)  # the SDK would send traces to OpenAI
    cities: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"18 C and sunny in {city}"

    async def run() -> tuple[object, list[str]]:
        client = AsyncOpenAI(base_url=smol_gateway, api_key="unused", max_retries=0)
        model_class = agents.OpenAIResponsesModel if adapter == "responses" else agents.OpenAIChatCompletionsModel
        agent = agents.Agent(name="weather", instructions="Answer questions about the weather.", tools=[get_weather],
                             model=model_class(model="smol", openai_client=client), tool_use_behavior="stop_on_first_tool",
                             model_settings=agents.ModelSettings(tool_choice="required", max_tokens=60, temperature=0))
        if not streamed:
            result = await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=2)
            return result, []
        result = agents.Runner.run_streamed(agent, "What is the weather in Paris?", max_turns=2)
        kinds = [event.type async for event in result.stream_events()]
        return result, kinds

    result, kinds = asyncio.run(run())
    assert cities and all(isinstance(city, str) for city in cities)  # the SDK parsed the arguments and called it
    assert result.final_output == f"18 C and sunny in {cities[0]}"
    assert [type(item).__name__ for item in result.new_items][:1] == ["ToolCallItem"]
    if streamed:
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds


@pytest.fixture(scope="module")
def storing_smol_gateway(tmp_path_factory):
    with serve_smol_gateway(context_tokens=2048, storage_url=f"sqlite:///{tmp_path_factory.mktemp('agents') / 'log.db'}") as url:
        yield url


def test_a_session_kept_in_a_conversation_carries_the_history_across_runs(storing_smol_gateway):
    """The SDK's `OpenAIConversationsSession`: its memory lives in a conversation (`/v1/conversations`): the SDK
    creates it, reads its items before each run and adds the run's items after — so the second run's model input
    holds the first run's exchange, and the conversation both."""
    agents.set_tracing_disabled(True)
    sent: list[list] = []

    async def run() -> tuple[list, str]:
        client = AsyncOpenAI(base_url=storing_smol_gateway, api_key="unused", max_retries=0)

        def record(data: agents.CallModelData) -> agents.ModelInputData:  # what the SDK sends the model, each turn
            sent.append(list(data.model_data.input))
            return data.model_data

        agent = agents.Agent(name="chat", instructions="Answer in a few words.", model=agents.OpenAIResponsesModel(model="smol", openai_client=client),
                             model_settings=agents.ModelSettings(max_tokens=400, temperature=0))  # incomplete is a failed run to the SDK
        session = agents.OpenAIConversationsSession(openai_client=client)
        config = agents.RunConfig(call_model_input_filter=record)
        await agents.Runner.run(agent, "My name is Ada.", session=session, run_config=config)
        await agents.Runner.run(agent, "What is my name?", session=session, run_config=config)
        items = await session.get_items()
        conversation_id = await session._get_session_id()
        listed = [item async for item in client.conversations.items.list(conversation_id, order="asc")]
        return items, listed

    items, listed = asyncio.run(run())
    assert [m.get("role") for m in items] == ["user", "assistant", "user", "assistant"]
    assert len(listed) == 4 and listed[0].content[0].text == "My name is Ada."
    second_input = sent[1]
    assert [m.get("role") for m in second_input][:3] == ["user", "assistant", "user"]  # the first run's exchange, then the question


def test_runs_continued_by_the_server_by_conversation_or_by_previous_response(storing_smol_gateway):
    """The SDK's server-managed continuations: `conversation_id` (each run sends only its new items with
    `conversation`; the gateway reads the history and appends the turn) and `previous_response_id` (the stored
    Response's conversation continues)."""
    agents.set_tracing_disabled(True)

    async def run() -> tuple[int, list[str]]:
        client = AsyncOpenAI(base_url=storing_smol_gateway, api_key="unused", max_retries=0)
        agent = agents.Agent(name="chat", instructions="Answer in a few words.", model=agents.OpenAIResponsesModel(model="smol", openai_client=client),
                             model_settings=agents.ModelSettings(max_tokens=400, temperature=0))
        conversation = await client.conversations.create()
        await agents.Runner.run(agent, "My name is Ada.", conversation_id=conversation.id)
        await agents.Runner.run(agent, "What is my name?", conversation_id=conversation.id)
        num_items = len([item async for item in client.conversations.items.list(conversation.id)])
        first = await agents.Runner.run(agent, "My name is Bob.")
        second = await agents.Runner.run(agent, "What is my name?", previous_response_id=first.last_response_id)
        history = [item async for item in client.responses.input_items.list(second.last_response_id, order="asc")]
        return num_items, [item.content[0].text for item in history if item.type == "message" and item.role == "user"]

    num_items, questions = asyncio.run(run())
    assert num_items == 4  # two questions, two answers
    assert questions == ["My name is Bob.", "What is my name?"]  # the second response's input held the first's
