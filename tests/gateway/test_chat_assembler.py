"""The streamed-answer assembler behind stored chat completions (gateway/stored_chats/assemble.py): interleaved
choices, tool calls in pieces, events split across reads, CRLF line ends, an upstream's usage over the gateway's,
and streams that must not be kept (failed, cut short)."""

from __future__ import annotations

import orjson

from switchboard.gateway.stored_chats.assemble import ChatAssembler

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m", "system_fingerprint": None}


def _sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps({**HEAD, **c}) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _piece(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    return {"choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def test_interleaved_choices_and_their_logprobs_add_up_in_index_order():
    lp = lambda t: {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}], "refusal": None}  # noqa: E731
    tap = ChatAssembler()
    tap.feed(_sse(_piece(1, {"role": "assistant", "content": "B"}, logprobs=lp("B")), _piece(0, {"role": "assistant", "content": "A"}, logprobs=lp("A")),
                  _piece(0, {"content": "a"}, logprobs=lp("a")), _piece(1, {}, "stop"), _piece(0, {}, "length")))
    assert tap.is_complete
    done = tap.completion()
    assert [c["index"] for c in done["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in done["choices"]] == ["Aa", "B"]
    assert [c["finish_reason"] for c in done["choices"]] == ["length", "stop"]
    assert [t["token"] for t in done["choices"][0]["logprobs"]["content"]] == ["A", "a"]
    assert done["object"] == "chat.completion" and done["id"] == "chatcmpl-1" and done["created"] == 5


def test_tool_calls_in_pieces_split_across_reads_and_crlf():
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    data = _sse(_piece(0, {"role": "assistant", "content": None, "tool_calls": [call]}),
                _piece(0, {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a"'}}]}),  # the name repeated whole
                _piece(0, {"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
                _piece(0, {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}), _piece(0, {}, "tool_calls"),
                {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 1}}})
    data = data.replace(b"\n", b"\r\n")
    tap = ChatAssembler()
    tap.usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}  # the gateway's, less detailed
    seen = []
    for i in range(0, len(data), 7):  # reads that cut events (and CR LF pairs) anywhere
        seen += tap.feed(data[i:i + 7])
    assert seen[-1] is None and len(seen) == 7  # six chunks, then [DONE]
    message = tap.completion()["choices"][0]["message"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [("call_1", "f", '{"a": 1}'), ("call_2", "g", "{}")]
    assert message["content"] is None and tap.is_complete
    assert tap.completion()["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}  # the upstream's own usage wins


def test_a_failed_or_unfinished_stream_is_not_complete():
    failed = ChatAssembler()
    failed.feed(b"data: " + orjson.dumps({**HEAD, **_piece(0, {"content": "x"})}) + b"\n\n" + b'data: {"error": {"message": "boom"}}\n\n')
    assert not failed.is_complete
    unfinished = ChatAssembler()
    unfinished.feed(b"data: " + orjson.dumps({**HEAD, **_piece(0, {"content": "x"})}) + b"\n\n")
    assert not unfinished.is_complete  # no finish reason, no [DONE]: the client left, or the stream broke
    one_of_two = ChatAssembler()
    one_of_two.feed(_sse(_piece(0, {"content": "x"}, "stop"), _piece(1, {"content": "y"})))
    assert not one_of_two.is_complete  # choice 1 never finished


def test_an_event_that_is_no_json_object_is_passed_on_and_nothing_is_kept():
    tap = ChatAssembler()
    seen = tap.feed(b"data: " + orjson.dumps({**HEAD, **_piece(0, {"content": "x"})}) + b"\n\ndata: {not json\n\ndata: [1]\n\n" + _sse(_piece(0, {}, "stop")))
    assert seen[1:3] == [b"{not json", b"[1]"] and seen[-1] is None
    assert not tap.is_complete
