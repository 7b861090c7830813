"""The rules of function calling on llama.cpp (engines/llamacpp/tools.py), without a model: which plan a request
gets, the grammar's schema, the prompt a template with and without tool syntax is handed, how output is read as
calls, and what a stream holds back. The real model behind the gateway: tests/engines/test_llamacpp_tools.py."""

from __future__ import annotations

import json

import pytest

from switchboard.engines.llamacpp import tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def _body(**more):
    return {"messages": USER, "tools": [WEATHER, TIME], **more}


@pytest.mark.parametrize(("choice", "mode"), [(None, "auto"), ("auto", "auto"), ("none", "none"), ("required", "required"),
                                              ({"type": "function", "function": {"name": "get_time"}}, "named")])
def test_the_plan_follows_tool_choice(choice, mode):
    plan = tools.plan(_body(**({} if choice is None else {"tool_choice": choice})))
    assert plan.mode == mode and list(plan.functions) == ["get_weather", "get_time"]
    assert plan.named == ("get_time" if mode == "named" else None)


def test_no_tools_is_no_plan_whatever_the_choice_says():
    assert tools.plan({"messages": USER}).mode == "none"
    assert tools.plan({"messages": USER, "tool_choice": "auto"}).mode == "none"


@pytest.mark.parametrize(("more", "param", "needle"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope', which is not in tools"),
    ({"tool_choice": "sometimes"}, "tool_choice", "tool_choice must be"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "needs at least one tool"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]", "only function tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", "1-64 letters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "declared twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters", "JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools[0].function.parameters", "of type 'object'"),
    ({"tools": {"name": "f"}}, "tools", "a list"),
])
def test_malformed_tools_are_the_clients_error_naming_the_field(more, param, needle):
    with pytest.raises(tools.ToolRequestError) as refused:
        tools.plan(_body(**more))
    assert refused.value.param == param and needle in str(refused.value)


def test_the_grammar_schemas():
    named = tools.plan(_body(tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert named.schema() == WEATHER["function"]["parameters"]
    # No parameters declared: the only arguments are {} (OpenAI's reading of a function without parameters).
    assert tools.plan(_body(tool_choice={"type": "function", "function": {"name": "get_time"}})).schema() == {
        "type": "object", "properties": {}, "additionalProperties": False}
    required = tools.plan(_body(tool_choice="required")).schema()
    assert required["type"] == "array" and required["minItems"] == 1 and "maxItems" not in required
    assert [c["properties"]["name"] for c in required["items"]["anyOf"]] == [{"const": "get_weather"}, {"const": "get_time"}]
    assert tools.plan(_body(tool_choice="required", parallel_tool_calls=False)).schema()["maxItems"] == 1
    assert tools.plan(_body()).schema() is None


def test_templates_that_read_tools_are_told_apart():
    assert tools.template_reads_tools("{%- if tools %}{{ tools | tojson }}{% endif %}")
    assert not tools.template_reads_tools("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    assert tools.template_reads_tools("{% for tool in tools %}{{ tool.function.name }}{% endfor %}")
    assert not tools.template_reads_tools("{{ 'You are an assistant with tools.' if not messages else '' }}x")
    assert not tools.template_reads_tools("You may use tools. {% for m in messages %}{{ m.content }}{% endfor %}")
    assert not tools.template_reads_tools(None)


HISTORY = [*USER, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]


def test_a_template_with_tool_syntax_gets_the_tools_and_arguments_as_objects():
    prompt = tools.chat_prompt({"messages": HISTORY, "tools": [WEATHER]}, tools.plan({"messages": HISTORY, "tools": [WEATHER]}), True)
    assert prompt["tools"] == [WEATHER]
    assert prompt["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert prompt["messages"][1]["content"] == "" and HISTORY[1]["content"] is None  # not changed in place


def test_a_template_without_tool_syntax_gets_a_tools_section_and_earlier_calls_as_text():
    body = {"messages": [{"role": "system", "content": "Be brief."}, *HISTORY], "tools": [WEATHER]}
    prompt = tools.chat_prompt(body, tools.plan(body), False)
    assert "tools" not in prompt
    system = prompt["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in system["content"] and "If no function is needed, answer normally." in system["content"]
    assert json.loads(prompt["messages"][2]["content"]) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert "tool_calls" not in prompt["messages"][2]
    # Without a system message one is added; a named choice is told to answer with the arguments only.
    named = {"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    first = tools.chat_prompt(named, tools.plan(named), False)["messages"][0]
    assert first["role"] == "system" and "Call the function get_weather now" in first["content"]


def test_without_tools_the_messages_are_the_templates_plain_ones():
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert tools.chat_prompt(body, tools.plan(body), False) == {"messages": [{"role": "user", "content": "a\nb"}]}


FUNCTIONS = {"get_weather": WEATHER["function"], "get_time": TIME["function"]}


@pytest.mark.parametrize(("text", "content", "calls"), [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [("get_weather", {"city": "Paris"})]),
    ('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
     '<tool_call>{"name": "get_time", "arguments": {"city": "Paris"}}', "Let me check.",
     [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]),
    ('[TOOL_CALLS] [{"name": "get_time", "arguments": {"city": "Rome"}}]', "", [("get_time", {"city": "Rome"})]),
    (' {"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
    ('[{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]', "", [("get_weather", {"city": "Oslo"})]),
])
def test_auto_output_in_the_common_call_formats_becomes_calls(text, content, calls):
    parsed = tools.parse_auto(text, FUNCTIONS)
    assert parsed is not None and parsed.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.calls] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in parsed.calls)
    assert len({c["id"] for c in parsed.calls}) == len(calls)


@pytest.mark.parametrize("text", [
    "It is sunny in Paris.",
    '{"city": "Paris"}',  # JSON, but not a call
    '{"name": "delete_everything", "arguments": {}}',  # a function nobody declared
    '[{"name": "get_weather", "arguments": {}}, {"name": "nope", "arguments": {}}]',
    '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # broken JSON
    '{"name": "get_weather", "arguments": [1, 2]}',
])
def test_auto_output_that_is_not_a_call_is_text(text):
    assert tools.parse_auto(text, FUNCTIONS) is None


def _run(filter_, pieces, finish="stop"):
    events = [e for piece in pieces for e in filter_.feed(*piece)]
    last, reason = filter_.close(finish)
    return events + last, reason


def test_auto_text_streams_as_it_comes_and_holds_back_only_what_may_be_a_tag():
    out = tools.OutputFilter(tools.plan(_body()))
    assert out.feed("It is", ["It", " is"]) == [("text", "It is", ["It", " is"])]
    assert out.feed(" sunny", [" sunny"]) == [("text", " sunny", [" sunny"])]
    assert out.feed(" <", [" <"]) == [("text", " ", None)]  # "<" may begin a tag: held, and its token with it
    assert out.feed("tool", ["tool"]) == []
    assert out.feed("ing>", ["ing>"]) == [("text", "<tooling>", [" <", "tool", "ing>"])]
    assert out.close("stop") == ([], "stop")


def test_auto_calls_streamed_in_pieces_come_out_whole_after_the_text_before_them():
    out = tools.OutputFilter(tools.plan(_body()))
    events, reason = _run(out, [("Checking. <tool", None), ('_call>{"name": "get_weather", ', None),
                                ('"arguments": {"city": "Paris"}}</tool_call>', None)])
    assert events[0] == ("text", "Checking. ", None)
    assert events[1][0] == "tool_calls" and events[1][1][0]["function"]["name"] == "get_weather" and reason == "tool_calls"


def test_auto_json_that_is_not_a_call_comes_out_as_text_at_the_end_with_its_tokens():
    out = tools.OutputFilter(tools.plan(_body()))
    assert out.feed('{"city"', ['{"', 'city"']) == []  # could be a call: held
    events, reason = _run(out, [(': "Paris"}', [': "', 'Paris"}'])])
    assert events == [("text", '{"city": "Paris"}', ['{"', 'city"', ': "', 'Paris"}'])] and reason == "stop"


def _assembled(events):
    """The calls that `call_start`/`call_args` events make, as a client accumulates them."""
    calls = []
    for event in events:
        if event[0] == "call_start":
            assert event[1] == len(calls) and event[2]["function"]["arguments"] == ""
            calls.append(json.loads(json.dumps(event[2])))
        elif event[0] == "call_args":
            calls[event[1]]["function"]["arguments"] += event[2]
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def test_required_calls_stream_as_they_are_generated_whatever_the_pieces():
    text = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "R}o\\"m{e", "n": [1, {"a": 2}]}}]'
    for size in (1, 2, 3, 7, len(text)):
        out = tools.OutputFilter(tools.plan(_body(tool_choice="required")))
        events, reason = _run(out, [(text[i:i + size], None) for i in range(0, len(text), size)])
        assert _assembled(events) == [("get_time", "{}"), ("get_weather", '{"city": "R}o\\"m{e", "n": [1, {"a": 2}]}')], size
        assert reason == "tool_calls" and not [e for e in events if e[0] == "text"]
    # the first call starts as soon as its head is read, before its arguments are complete
    out = tools.OutputFilter(tools.plan(_body(tool_choice="required")))
    assert out.feed('[{"name": "get_w', None) == []
    started = out.feed('eather", "arguments": {"ci', None)
    assert [e[0] for e in started] == ["call_start", "call_args"] and started[1][2] == '{"ci'


def test_a_named_call_streams_its_arguments_from_the_first_piece_and_finishes_stop():
    named = tools.OutputFilter(tools.plan(_body(tool_choice={"type": "function", "function": {"name": "get_weather"}})))
    first = named.feed('{ "city', ["x"])
    assert first[0][0] == "call_start" and first[0][2]["function"]["name"] == "get_weather" and first[1] == ("call_args", 0, '{ "city')
    events, reason = _run(named, [('": "Rome"', None), (" ", None), ("} ", None), ("\n", None)])
    assert _assembled(first + events) == [("get_weather", '{ "city": "Rome" }')]  # the model's own text, less the trailing space
    assert reason == "stop"  # a forced call finishes "stop", as OpenAI's


def test_a_call_cut_short_by_max_tokens():
    named = tools.OutputFilter(tools.plan(_body(tool_choice={"type": "function", "function": {"name": "get_weather"}})))
    events, reason = _run(named, [('{"city": "Ro', None)], finish="length")
    assert _assembled(events) == [("get_weather", '{"city": "Ro')] and reason == "length"  # OpenAI sends the partial arguments
    required = tools.OutputFilter(tools.plan(_body(tool_choice="required")))
    events, reason = _run(required, [('[{"name": "get_time", "arguments": {"a', None)], finish="length")
    assert _assembled(events) == [("get_time", '{"a')] and reason == "length"
    # cut before any call began: what there is comes back as text
    required = tools.OutputFilter(tools.plan(_body(tool_choice="required")))
    assert _run(required, [('[{"name": "get_ti', ["t"])], finish="length") == ([("text", '[{"name": "get_ti', None)], "length")


def test_without_tools_every_piece_passes_straight_through():
    out = tools.OutputFilter(tools.plan({"messages": USER}))
    assert out.feed("{<tool_call>", ["t"]) == [("text", "{<tool_call>", ["t"])]
    assert out.feed("", ["rest"]) == [("text", "", ["rest"])]
    assert out.close("length") == ([], "length")


# --- the config's chat_template (engines/llamacpp/templates.py) ---------------------------------------------------


@pytest.mark.parametrize(("value", "needle"), [
    ("/no/such/template.jinja", "neither a Jinja template nor a file"),
    ("{% for m in messages %}{{ m.content }", "not a valid Jinja template"),
])
def test_a_chat_template_that_cannot_work_is_the_configs_error(value, needle):
    from switchboard.config import parse_config
    from switchboard.config.loader import ConfigError

    with pytest.raises(ConfigError, match=needle):
        parse_config("experts:\n  - id: smol\n    backend: {kind: llamacpp, chat_template: " + json.dumps(value) + "}\n")


def test_a_chat_template_is_its_text_or_a_files(tmp_path):
    from switchboard.engines.llamacpp import templates

    text = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    (tmp_path / "t.jinja").write_text(text)
    assert templates.resolve(str(tmp_path / "t.jinja")) == text == templates.resolve(text)
    templates.check(text)  # Hugging Face's generation tag compiles, as in llama-cpp-python's formatter


@pytest.mark.parametrize(("pieces", "first_out"), [
    (["[", "1", "] First"], 1),  # a numbered reference, not a call: streams from its second piece
    (["{", "x}"], 1),
    (["[", " {", "\"name\""], None),  # could be a call: held to the end
    (["[TOOL", "_CALLS]"], None),
    (["<tool", "s are fun"], 1),
])
def test_auto_tells_a_call_from_text_as_soon_as_it_can(pieces, first_out):
    out = tools.OutputFilter(tools.plan(_body()))
    released = [i for i, piece in enumerate(pieces) if out.feed(piece, None)]
    assert (released[0] if released else None) == first_out


def _allowed(mode, *names):
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [{"type": "function", "function": {"name": n}} for n in names]}}


def test_allowed_tools_narrow_what_the_model_sees_and_may_call():
    body = _body(tool_choice=_allowed("required", "get_time"))
    plan = tools.plan(body)
    assert plan.mode == "required" and list(plan.functions) == ["get_time"] and plan.offered == (TIME,)
    assert [c["properties"]["name"] for c in plan.schema()["items"]["anyOf"]] == [{"const": "get_time"}]
    assert tools.chat_prompt(body, plan, True)["tools"] == [TIME]
    assert "get_weather" not in tools.chat_prompt(body, plan, False)["messages"][0]["content"]
    auto = tools.plan(_body(tool_choice=_allowed("auto", "get_weather")))
    assert auto.mode == "auto" and tools.parse_auto('{"name": "get_time", "arguments": {}}', auto.functions) is None


@pytest.mark.parametrize(("choice", "param"), [
    (_allowed("sometimes", "get_time"), "tool_choice.allowed_tools"),
    (_allowed("auto", "get_stock_price"), "tool_choice.allowed_tools.tools[0]"),
    ({"type": "allowed_tools"}, "tool_choice.allowed_tools"),
])
def test_malformed_allowed_tools_name_the_field(choice, param):
    with pytest.raises(tools.ToolRequestError) as refused:
        tools.plan(_body(tool_choice=choice))
    assert refused.value.param == param


def test_required_calls_keep_nested_models_references_resolvable():
    """pydantic's nested models and enums come as `$defs` with `#/$defs/...` references, which resolve from the
    document's root: nested in the call array, they are moved to its root under per-function names."""
    from llama_cpp import llama_grammar

    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ship = {"type": "function", "function": {"name": "ship", "parameters": {
        "$defs": {"Address": address}, "type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}}, "required": ["to"]}}}
    bill = {"type": "function", "function": {"name": "bill", "parameters": {  # the same def name, another schema
        "definitions": {"Address": {"type": "string"}}, "type": "object", "properties": {"to": {"$ref": "#/definitions/Address"}}}}}
    schema = tools.plan({"messages": USER, "tools": [ship, bill], "tool_choice": "required"}).schema()
    assert schema["$defs"] == {"f0_Address": address, "f1_Address": {"type": "string"}}
    ship_args, bill_args = (c["properties"]["arguments"] for c in schema["items"]["anyOf"])
    assert ship_args["properties"]["to"] == {"$ref": "#/$defs/f0_Address"} and "$defs" not in ship_args
    assert bill_args["properties"]["to"] == {"$ref": "#/$defs/f1_Address"} and "definitions" not in bill_args
    llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)  # compiles: every reference resolves
