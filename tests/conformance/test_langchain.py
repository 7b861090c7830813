"""LangChain's OpenAI integration (`langchain-openai`, the most used LLM framework's client for OpenAI-compatible
servers, a dev dependency) against the real SmolLM2 expert and the local embedding model: chat whole, streamed and
batched; tools bound with a forced choice (whole and streamed), the tool loop's second turn; structured output by
JSON schema and by function calling; logprobs; the Responses API mode; the legacy completions LLM; embeddings.

What LangChain itself needs from the internet is left out, as a user here must: token counting and the embeddings
context check download tiktoken's vocabulary (`check_embedding_ctx_length=False`, LangChain's own advice for
servers that are not OpenAI; docs/embeddings.md)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from switchboard.testing.servers import serve_smol_gateway

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def base_url():
    with serve_smol_gateway(context_tokens=2048) as url:
        yield url


def _chat(base_url: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="smol", base_url=base_url, api_key="unused", max_retries=0, temperature=0, **{"max_tokens": 24, **kwargs})


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 C and sunny in {city}"


class City(BaseModel):
    name: str
    country: str


def test_chat_whole_streamed_and_batched(base_url):
    llm = _chat(base_url)
    whole = llm.invoke("Name a colour.")
    assert whole.content and whole.usage_metadata["output_tokens"] > 0 and whole.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(chunk.content for chunk in llm.stream("Name a colour.")) == whole.content  # greedy: the same answer
    usage = [c.usage_metadata for c in _chat(base_url, stream_usage=True).stream("Name a colour.") if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == whole.usage_metadata["output_tokens"]
    assert [m.content for m in llm.batch(["Name a colour.", "Name a colour."])] == [whole.content] * 2


@pytest.mark.parametrize("tool_choice", ["any", "get_weather"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_forced_tool_calls_whole_and_streamed(base_url, tool_choice, streamed):
    llm = _chat(base_url, max_tokens=40).bind_tools([get_weather], tool_choice=tool_choice, parallel_tool_calls=False)
    if streamed:
        message = None
        for chunk in llm.stream("What is the weather in Paris?"):
            message = chunk if message is None else message + chunk  # LangChain joins the streamed call's pieces
    else:
        message = llm.invoke("What is the weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    assert get_weather.invoke(call["args"]).startswith("18 C")  # arguments the tool itself validates


def test_the_tool_loops_second_turn(base_url):
    llm = _chat(base_url, max_tokens=40)
    question = HumanMessage("What is the weather in Paris?")
    first = llm.bind_tools([get_weather], tool_choice="any").invoke([question])
    call = first.tool_calls[0]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    second = llm.bind_tools([get_weather]).invoke([question, first, result])  # the history holds the call and its result
    assert second.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    assert second.content or second.tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(base_url, method):
    city = _chat(base_url, max_tokens=60).with_structured_output(City, method=method).invoke("Paris is a city in which country?")
    assert isinstance(city, City) and city.name and city.country


def test_logprobs_and_the_responses_api_mode(base_url):
    message = _chat(base_url).bind(logprobs=True, top_logprobs=2).invoke("Hi")
    first = message.response_metadata["logprobs"]["content"][0]
    assert first["logprob"] <= 0 and len(first["top_logprobs"]) == 2
    responses = _chat(base_url, use_responses_api=True)
    text = responses.invoke("Name a colour.").text
    assert text and "".join(chunk.text for chunk in responses.stream("Name a colour.")) == text
    [call] = _chat(base_url, max_tokens=40, use_responses_api=True).bind_tools(
        [get_weather], tool_choice="get_weather", parallel_tool_calls=False).invoke("What is the weather in Paris?").tool_calls
    assert call["name"] == "get_weather" and "city" in call["args"]


def test_legacy_completions_and_embeddings(base_url):
    completion = OpenAI(model="smol", base_url=base_url, api_key="unused", max_retries=0, max_tokens=6, temperature=0).invoke("The capital of France is")
    assert completion.strip()
    embeddings = OpenAIEmbeddings(model="all-minilm-l6-v2", base_url=base_url, api_key="unused", max_retries=0, check_embedding_ctx_length=False)
    query, docs = embeddings.embed_query("Paris"), embeddings.embed_documents(["Paris", "Rome", "a banana"])
    assert len(query) == 384 and len(docs) == 3
    similarity = [sum(a * b for a, b in zip(query, d)) for d in docs]
    assert similarity[0] == max(similarity)  # the same text, the nearest vector
