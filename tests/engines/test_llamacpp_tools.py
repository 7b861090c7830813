"""Function calling on the real SmolLM2 model behind the real gateway, the official openai client (and its
helpers: `parse` with a pydantic tool, the chat stream helper, `responses.parse`) as the caller. `required` and a
named function are made by a grammar, so every answer is a well-formed call with arguments that match the schema;
`auto` is the model's choice (this 135M model mostly answers in text), so only its shape is checked here. The rules
without a model: tests/engines/test_llamacpp_tool_rules.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import openai
import pydantic
import pytest

from switchboard.config import load_config
from switchboard.engines.llamacpp.paths import default_model_path
from switchboard.engines.llamacpp.tokens import PromptTokenCounter
from switchboard.testing.servers import serve_smol_gateway

pytestmark = pytest.mark.llamacpp


class GetWeather(pydantic.BaseModel):
    """The current weather in a city."""

    city: str = pydantic.Field(max_length=20)


class GetTime(pydantic.BaseModel):
    """The local time in a city."""

    city: str = pydantic.Field(max_length=20)


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def client():
    with serve_smol_gateway(context_tokens=2048) as url:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as c:
            yield c


def test_required_tool_calls_parse_into_the_clients_pydantic_models(client):
    answer = client.chat.completions.parse(model="smol", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls and all(call.function.name in ("GetWeather", "GetTime") for call in calls)
    assert all(isinstance(call.function.parsed_arguments, (GetWeather, GetTime)) for call in calls)
    assert len({call.id for call in calls}) == len(calls)


def test_no_parallel_calls_means_exactly_one(client):
    answer = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                            max_tokens=80, temperature=0.8, seed=3)
    assert len(answer.choices[0].message.tool_calls) == 1


def test_a_named_function_streamed_through_the_clients_stream_helper(client):
    named = {"type": "function", "function": {"name": "GetTime"}}
    with client.chat.completions.stream(model="smol", messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=60, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert "tool_calls.function.arguments.done" in kinds
    assert choice.finish_reason == "stop"  # a forced call finishes "stop", as OpenAI's does
    (call,) = choice.message.tool_calls
    assert call.function.name == "GetTime" and isinstance(call.function.parsed_arguments, GetTime)


def test_the_tool_loop_second_turn_is_answered_and_the_replica_stays_in_service(client):
    first = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0)
    message = first.choices[0].message
    turns = [*ASK, message.model_dump(exclude_none=True),
             *({"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"} for call in message.tool_calls)]
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(model="smol", messages=turns, tools=TOOLS, max_tokens=30, temperature=0, stream=True))
            finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            finishes = [client.chat.completions.create(model="smol", messages=turns, tools=TOOLS, max_tokens=30, temperature=0).choices[0].finish_reason]
        assert finishes in (["stop"], ["length"], ["tool_calls"])


def test_auto_is_answered_as_text_or_as_calls_to_declared_functions(client):
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=40, temperature=0, stream=True))
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            text = "".join(d.content or "" for d in deltas)
            names = [t.function.name for d in deltas for t in d.tool_calls or () if t.function and t.function.name]
        else:
            message = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=40, temperature=0).choices[0].message
            text, names = message.content or "", [t.function.name for t in message.tool_calls or ()]
        assert text or names
        assert set(names) <= {"GetWeather", "GetTime"}


def test_responses_function_calls_parse(client):
    response = client.responses.parse(model="smol", input="Weather in Paris?", tools=[openai.pydantic_function_tool(GetWeather)],
                                      tool_choice="required", max_output_tokens=60, temperature=0)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(isinstance(item.parsed_arguments, GetWeather) for item in calls)
    assert response.status == "completed"


def test_allowed_tools_restrict_the_calls_chat_and_responses(client):
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "GetTime"}}]}}
    answer = client.chat.completions.parse(model="smol", messages=ASK, tools=TOOLS, tool_choice=allowed, max_tokens=80, temperature=0)
    assert {call.function.name for call in answer.choices[0].message.tool_calls} == {"GetTime"}
    response = client.responses.create(model="smol", input="Weather in Paris?", max_output_tokens=80, temperature=0,
                                       tools=[{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]} for t in TOOLS],
                                       tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "GetWeather"}]})
    assert {item.name for item in response.output if item.type == "function_call"} == {"GetWeather"}


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


class Ship(pydantic.BaseModel):
    """Ship a parcel to an address."""

    to: Address
    speed: Literal["standard", "express"]


def test_nested_models_and_enums_are_called_with_arguments_that_validate(client):
    # pydantic's nested models and Literal/enums come as $defs and references; under `required` they sit inside
    # the call array's schema, where they once failed to compile and llama-cpp-python fell back to any JSON.
    for tool_choice in ("required", {"type": "function", "function": {"name": "Ship"}}):
        answer = client.chat.completions.parse(model="smol", messages=[{"role": "user", "content": "Ship my parcel to Paris, France, fast."}],
                                               tools=[openai.pydantic_function_tool(Ship)], tool_choice=tool_choice, max_tokens=200, temperature=0)
        calls = answer.choices[0].message.tool_calls
        assert calls and all(isinstance(call.function.parsed_arguments, Ship) for call in calls), tool_choice


def test_bad_tools_are_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "get_stock_price"}})
    assert refused.value.body["param"] == "tool_choice" and "not in tools" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smol", messages=ASK, tools=[{"type": "function", "function": {"name": "bad name"}}], max_tokens=4)
    assert refused.value.body["param"] == "tools[0].function.name"


def test_arguments_are_json_that_matches_the_schema_when_not_cut_short(client):
    # A stop sequence that the arguments contain would cut the call: the grammar ends a forced call instead.
    answer = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=80, temperature=0, stop=['"', "}"],
                                            tool_choice={"type": "function", "function": {"name": "GetWeather"}})
    (call,) = answer.choices[0].message.tool_calls
    assert GetWeather.model_validate(json.loads(call.function.arguments))


# --- a chat template of the config's that renders tools (examples/engines/llamacpp-tools.yaml) ------------------

HERMES_TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "engines" / "hermes-tools.jinja"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_LOOP = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]


@pytest.fixture(scope="module")
def hermes():
    with serve_smol_gateway(context_tokens=2048, chat_template=HERMES_TEMPLATE) as url:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as c:
            yield c, PromptTokenCounter.load(default_model_path(), 2048, HERMES_TEMPLATE.read_text())


@pytest.mark.parametrize("messages", [ASK, TOOL_LOOP], ids=["question", "tool-loop"])
def test_a_configured_template_renders_the_tools_itself_and_counts_stay_exact(hermes, messages):
    client, counter = hermes
    body = {"messages": messages, "tools": [WEATHER_TOOL]}
    prompt = counter.llm.detokenize(counter.chat_tokens(body)).decode()
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in prompt  # the template's own tools section...
    assert "You can call these functions" not in prompt  # ...not the one for templates without tool syntax
    if messages is TOOL_LOOP:  # earlier calls as the template writes them, their arguments an object
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
        assert "<tool_response>\n18 C and sunny\n</tool_response>" in prompt
    answer = client.chat.completions.create(model="smol", max_tokens=4, temperature=0, **body)
    assert answer.usage.prompt_tokens == len(counter.chat_tokens(body))


def test_the_template_example_config_loads_with_its_files_text():
    config = load_config(HERMES_TEMPLATE.parent / "llamacpp-tools.yaml")  # names the template relative to itself
    assert config.experts[0].backend.chat_template == HERMES_TEMPLATE.read_text()  # the text travels with the config
