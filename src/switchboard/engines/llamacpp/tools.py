"""Function calling on llama.cpp experts: what the model sees, what it may emit, and how its output becomes
OpenAI `tool_calls`.

llama.cpp runs whatever GGUF it is given; some chat templates render `tools` (Qwen2.5, Llama 3.1, Hermes, ...),
others — SmolLM2-135M's, the default expert's — know nothing of tools. The rules, by `tool_choice` (vLLM's, whose
OpenAI server does the same with guided decoding):

- **a named function, or `required`**: the output is constrained by a grammar (llama.cpp's JSON-schema grammar,
  the `response_format` path) to exactly that function's arguments, or to a JSON array of one or more calls
  `[{"name": ..., "arguments": {...}}]` (one at most with `parallel_tool_calls: false`). Every answer is then a
  well-formed call to a declared function with arguments that match its schema, whatever the model — only what
  the arguments say is the model's. A forced named call finishes with `stop`, as OpenAI's does; `required` with
  `tool_calls`.
- **`auto`** (the default when tools are given): the model decides. Its output is read as calls when it is one of
  the common call formats — Hermes/Qwen `<tool_call>{...}</tool_call>` (text before the first tag stays the
  message's content), Mistral's `[TOOL_CALLS] [...]`, or a bare JSON object or array of `{"name", "arguments"}`
  (`parameters` too: Llama 3.1) — naming declared functions only; anything else is its text. Streamed, text that
  could still become a call is held back until it is decided, so a call never leaks out as content.
- **`none`**: the tools are left out of the prompt and nothing is parsed.
- **`allowed_tools`** (`{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": [...]}}`):
  its mode, over the named functions only; the model is shown only those.

What the model sees: a template that reads `tools` is handed them, and earlier calls' arguments as objects (as
Hugging Face templates expect; vLLM does the same). A template that does not (found by the word `tools` in its
source) gets a system-message section listing the functions and the JSON-array call format, and earlier calls
written in that format, so the conversation stays coherent with what it was told. SmolLM2-135M follows such
instructions poorly under `auto`; the grammar makes `required` and named calls well-formed regardless.

Pure (no llama.cpp import): the worker (`worker.py`) and the gateway's token counter (`tokens.py`) build the same
prompt from `chat_prompt`, so prompt token counts stay exact with tools.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from typing import Any, Literal

from switchboard.engines.llamacpp.messages import template_messages

Mode = Literal["none", "auto", "required", "named"]

HERMES_OPEN = "<tool_call>"
MISTRAL_PREFIX = "[TOOL_CALLS]"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolRequestError(ValueError):
    """The request's `tools` or `tool_choice` is malformed (the client's 400, naming `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class ToolPlan:
    """How one chat request uses its tools. `functions` are the definitions, by name, of the functions the model
    may call (all declared ones, or those an `allowed_tools` choice names); `offered` are those tools as sent,
    which the prompt shows."""

    mode: Mode
    functions: dict[str, dict[str, Any]]
    named: str | None = None
    parallel: bool = True
    offered: tuple[dict[str, Any], ...] = ()

    @property
    def is_active(self) -> bool:
        return self.mode != "none"

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must match (named, required), or None (auto, none)."""
        if self.mode == "named":
            return _parameters(self.functions[self.named or ""])
        if self.mode == "required":
            calls, defs = [], {}
            for i, (name, fn) in enumerate(self.functions.items()):
                arguments, own_defs = _hoisted(_parameters(fn), f"f{i}_")
                defs.update(own_defs)
                calls.append({"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
                              "required": ["name", "arguments"], "additionalProperties": False})
            return {"type": "array", "minItems": 1, **({} if self.parallel else {"maxItems": 1}), "items": {"anyOf": calls},
                    **({"$defs": defs} if defs else {})}
        return None


def _hoisted(schema: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A function's parameters schema made to sit inside another: its `$defs` (or `definitions`: pydantic's nested
    models, enums) moved out under names with `prefix`, and its `#/...` references renamed to match, since a
    reference resolves from the document's root (the call array's, once the parameters are nested in it)."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if not defs:
        return schema, {}

    def renamed(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: renamed(v) for k, v in node.items() if k not in ("$defs", "definitions")}
            ref = node.get("$ref")
            if isinstance(ref, str):
                for root in ("#/$defs/", "#/definitions/"):
                    if ref.startswith(root):
                        out["$ref"] = "#/$defs/" + prefix + ref[len(root):]
            return out
        if isinstance(node, list):
            return [renamed(v) for v in node]
        return node

    return renamed(schema), {prefix + name: renamed(d) for name, d in defs.items()}


def plan(body: dict[str, Any]) -> ToolPlan:
    """The plan for a chat request `body`; raises `ToolRequestError` for malformed tools or tool choice."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ToolRequestError("tools must be a list of function tools", "tools")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ToolRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}; only function tools "
                                   "are supported here", f"tools[{i}]")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ToolRequestError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'", f"tools[{i}].function.name")
        if name in functions:
            raise ToolRequestError(f"tools[{i}]: the function name {name!r} is declared twice", f"tools[{i}].function.name")
        parameters = fn.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict) or parameters.get("type", "object") != "object"):
            # OpenAI's rule too: arguments are an object (so a call's arguments end where their braces close).
            raise ToolRequestError(f"tools[{i}].function.parameters must be a JSON Schema of type 'object'", f"tools[{i}].function.parameters")
        functions[name] = fn
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls") is not False
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        choice, functions, tools = _allowed(choice, functions, tools)
    offered = tuple(tools)
    if choice is None:
        return ToolPlan("auto" if functions else "none", functions, parallel=parallel, offered=offered)
    if choice in ("none", "auto", "required"):
        if choice == "required" and not functions:
            raise ToolRequestError("tool_choice 'required' needs at least one tool in tools", "tool_choice")
        return ToolPlan(choice if functions else "none", functions, parallel=parallel, offered=offered)  # type: ignore[arg-type]
    name = _function_name(choice)
    if not isinstance(name, str):
        raise ToolRequestError("tool_choice must be 'none', 'auto', 'required', {'type': 'function', 'function': {'name': ...}} "
                               "or {'type': 'allowed_tools', 'allowed_tools': {'mode': ..., 'tools': [...]}}", "tool_choice")
    if name not in functions:
        raise ToolRequestError(f"tool_choice names the function {name!r}, which is not in tools", "tool_choice")
    return ToolPlan("named", functions, named=name, parallel=parallel, offered=offered)


def _allowed(choice: dict[str, Any], functions: dict[str, dict[str, Any]],
             tools: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI's `allowed_tools` choice: its mode, and the declared functions (and tools) it names. The model is
    shown only those, so it cannot call the others."""
    allowed = choice.get("allowed_tools")
    if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required") or not isinstance(allowed.get("tools"), list):
        raise ToolRequestError("tool_choice.allowed_tools must be {'mode': 'auto' | 'required', 'tools': [...]}", "tool_choice.allowed_tools")
    names = []
    for i, tool in enumerate(allowed["tools"]):
        name = _function_name(tool)
        if name not in functions:
            raise ToolRequestError(f"tool_choice.allowed_tools.tools[{i}] must name a function declared in tools", f"tool_choice.allowed_tools.tools[{i}]")
        names.append(name)
    kept = {name: fn for name, fn in functions.items() if name in names}
    return allowed["mode"], kept, [t for t in tools if t["function"]["name"] in kept]


def _function_name(choice: Any) -> Any:
    """The name in `{"type": "function", "function": {"name": ...}}` (a tool choice, an allowed tool), else None."""
    return (choice.get("function") or {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" else None


_TOOLS_IN_JINJA = re.compile(r"\{[{%][^}]*\btools\b")
_STRING_LITERAL = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


@functools.lru_cache(maxsize=8)  # asked per request (worker and gateway counter) of the one template each model has
def template_reads_tools(template: str | None) -> bool:
    """Whether a chat template renders `tools`: the variable inside a Jinja tag (`{% if tools %}`,
    `{{ tools | tojson }}`), as Hugging Face templates with tool syntax have it; the word in the template's text or
    in a string ("You are an assistant with tools") is not enough."""
    return bool(template) and _TOOLS_IN_JINJA.search(_STRING_LITERAL.sub("''", template or "")) is not None


def chat_prompt(body: dict[str, Any], tool_plan: ToolPlan, reads_tools: bool) -> dict[str, Any]:
    """The arguments that make the prompt: `messages` ready for the template, and `tools` when it renders them."""
    messages = template_messages(body["messages"])
    if not tool_plan.is_active:
        return {"messages": [_calls_as_text(m) for m in messages] if not reads_tools else _calls_as_objects(messages)}
    if reads_tools:
        return {"messages": _calls_as_objects(messages), "tools": list(tool_plan.offered)}
    messages = [_calls_as_text(m) for m in messages]
    section = _tools_section(tool_plan)
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        messages = [{**first, "role": "system", "content": f"{first.get('content') or ''}\n\n{section}".lstrip()}, *messages[1:]]
    else:
        messages = [{"role": "system", "content": section}, *messages]
    return {"messages": messages}


def _parameters(fn: dict[str, Any]) -> dict[str, Any]:
    # No parameters declared: the call takes none (OpenAI's reading), so the only arguments are {}.
    return fn.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}


def _tools_section(tool_plan: ToolPlan) -> str:
    listed = "\n".join(json.dumps({"name": name, "description": fn.get("description", ""), "parameters": _parameters(fn)},
                                  ensure_ascii=False) for name, fn in tool_plan.functions.items())
    if tool_plan.mode == "named":
        how = f"Call the function {tool_plan.named} now: reply with only its arguments, as one JSON object."
    else:
        how = ('To call functions, reply with only a JSON array of calls and nothing else, for example '
               '[{"name": "<function name>", "arguments": {<arguments>}}]. Each result comes back in a message from the tool.')
        if tool_plan.mode == "auto":
            how += " If no function is needed, answer normally."
    return f"# Tools\n\nYou can call these functions (each: its name, what it does, the JSON Schema of its arguments):\n{listed}\n\n{how}"


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments  # not JSON: the template gets the string as sent
    return arguments


def _calls_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier calls with their arguments as objects, as Hugging Face templates read them."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c.get("function", {}), "arguments": _arguments_object(c.get("function", {}).get("arguments"))}}
                     for c in m["tool_calls"] if isinstance(c, dict)]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant turn's calls written into its content, in the format the tools section asks for."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    written = json.dumps([{"name": (c.get("function") or {}).get("name"), "arguments": _arguments_object((c.get("function") or {}).get("arguments"))}
                          for c in calls if isinstance(c, dict)], ensure_ascii=False)
    content = message.get("content") or ""
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**rest, "content": f"{content}\n{written}" if content else written}


# ---- the output ----


def new_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclasses.dataclass(frozen=True)
class Parsed:
    """An answer read as calls: `content` before them (often empty) and the calls, OpenAI-shaped."""

    content: str
    calls: list[dict[str, Any]]


def _call_from(obj: Any, functions: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or obj.get("name") not in functions:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _arguments_object(arguments)
    if not isinstance(arguments, dict):
        return None
    return new_call(obj["name"], json.dumps(arguments, ensure_ascii=False))


def _calls_from(value: Any, functions: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every call object of `value` (one, or a list) as a call, or None if any is not one (or there are none)."""
    items = value if isinstance(value, list) else [value]
    calls = [_call_from(item, functions) for item in items]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def parse_auto(text: str, functions: dict[str, Any]) -> Parsed | None:
    """`text` read as calls in one of the formats the module lists, or None when it is not (it is then text)."""
    if HERMES_OPEN in text:
        head = text[: text.index(HERMES_OPEN)]
        try:
            calls = _calls_from([json.loads(body) for body in _HERMES_CALL.findall(text)], functions)
        except ValueError:
            return None
        return Parsed(head.strip(), calls) if calls else None
    stripped = text.strip()
    if stripped.startswith(MISTRAL_PREFIX):
        stripped = stripped[len(MISTRAL_PREFIX):].strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    calls = _calls_from(value, functions)
    return Parsed("", calls) if calls else None


class OutputFilter:
    """Turns a tool-using generation's text pieces into what the client is sent: `feed` each piece (with its
    logprob tokens, or None), `close` at the end. Both return events `("text", text, tokens)`, the calls' events
    below, and, from `close`, at most one `("tool_calls", calls)` (whole calls); `close` also returns the finish
    reason to report.

    Under `none` every piece passes straight through. Under `named`/`required` the calls stream as they are
    generated (`ConstrainedCalls`: `("call_start", i, call)`, then `("call_args", i, text)`). Under `auto`, text is held while it could still be the start of a call (`_begins_call`: a
    leading `{"`, `[{"`, a prefix of `<tool_call>`), and from a `<tool_call>` tag on; the rest streams as it comes."""

    def __init__(self, tool_plan: ToolPlan) -> None:
        self.plan = tool_plan
        self._held = ""
        self._held_tokens: list[tuple[Any, int]] = []  # (token, the held text's length once it is out)
        self._state = "undecided"  # auto: until the answer's start tells text ("text") from a call ("call")
        self._constrained = ConstrainedCalls(tool_plan) if tool_plan.mode in ("named", "required") else None

    def feed(self, text: str, tokens: list | None) -> list[tuple]:
        if self.plan.mode == "none":
            return [("text", text, tokens)] if text or tokens else []
        if self._constrained is not None:
            self._held += text  # kept whole: a cut-short required answer that began no call comes back as text
            return self._constrained.feed(text)
        self._held += text
        self._held_tokens += [(t, len(self._held)) for t in tokens or ()]
        if self._state == "undecided":
            begins = _begins_call(self._held.lstrip())
            if begins is None:
                return []
            self._state = "call" if begins else "text"
        if self._state != "text":
            return []
        at = self._held.find(HERMES_OPEN)
        if at >= 0:
            self._state = "call"
            return self._release(at)
        return self._release(len(self._held) - _partial_tag_length(self._held))

    def _release(self, length: int) -> list[tuple]:
        """Sends the first `length` held characters, with the tokens whose text they complete."""
        tokens = [t for t, end in self._held_tokens if end <= length]
        if length <= 0 and not tokens:
            return []
        text, self._held = self._held[:length], self._held[length:]
        self._held_tokens = [(t, end - length) for t, end in self._held_tokens if end > length]
        return [("text", text, tokens if tokens else None)]

    def close(self, finish: str) -> tuple[list[tuple], str]:
        if self._constrained is not None:
            if not self._constrained.num_started:  # cut short before any call began (or nothing generated)
                self._held_tokens = []
                return self._release(len(self._held)), finish
            if finish == "length":
                return [], finish  # the calls as far as they got, as OpenAI sends them
            return [], "stop" if self.plan.mode == "named" else "tool_calls"  # a forced call finishes "stop", as OpenAI's
        if self._state != "call":  # text, never a call (under `none` nothing is held)
            return self._release(len(self._held)), finish
        parsed = parse_auto(self._held, self.plan.functions)
        if parsed is None:
            return self._release(len(self._held)), finish
        events: list[tuple] = [("text", parsed.content, None)] if parsed.content else []
        events.append(("tool_calls", parsed.calls))
        return events, finish if finish == "length" else "tool_calls"


_CALL_HEAD = re.compile(r'\s*[\[,]\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


class ConstrainedCalls:
    """Streams the calls of a `named` or `required` generation as they are generated, as OpenAI streams them:
    `("call_start", i, call)` once call i's name is known (its `arguments` ""), then `("call_args", i, text)`
    pieces that concatenate to its arguments. The grammar fixes the output's shape — a named call's arguments
    object from the first character; for `required`, `[{"name": "...", "arguments": {...}}, ...]`, keys in that
    order — so a call begins when its head is read and its arguments end where their outer braces close."""

    def __init__(self, tool_plan: ToolPlan) -> None:
        self.plan = tool_plan
        self.num_started = 0
        self._pending = ""  # required: text not yet read (a call's head may arrive in pieces)
        self._state = "head"  # reading a call's head, its arguments, or the brace that closes the call
        self._depth = 0  # inside the current arguments: their brace/bracket depth, outside strings
        self._in_string = self._escaped = False

    def feed(self, text: str) -> list[tuple]:
        events: list[tuple] = []
        if self.plan.mode == "named":
            if not self.num_started:
                events.append(self._start(self.plan.named or ""))
            # Whitespace is held until more arguments follow it: the grammar may end the object with a space,
            # which is no part of the arguments.
            text = self._pending + text
            kept = text.rstrip()
            self._pending = text[len(kept):]
            return events + ([("call_args", 0, kept)] if kept else [])
        self._pending += text
        while self._pending:
            if self._state == "args":
                if self._depth == 0:
                    self._pending = self._pending.lstrip()  # the space before the arguments is not theirs
                    if not self._pending:
                        break
                end = self._scan(self._pending)
                events.append(("call_args", self.num_started - 1, self._pending[:end]))
                self._pending = self._pending[end:]
                if self._depth:
                    break
                self._state = "close"
            elif self._state == "close":
                self._pending = self._pending.lstrip()
                if self._pending:
                    self._pending = self._pending.removeprefix("}")  # the call object's own closing brace
                    self._state = "head"
            else:
                head = _CALL_HEAD.match(self._pending)
                if head is None:
                    break  # the head is still arriving (or the array is closing: `]`, which starts no call)
                events.append(self._start(json.loads(head.group(1))))
                self._pending = self._pending[head.end():]
                self._state = "args"
        return events

    def _start(self, name: str) -> tuple:
        self.num_started += 1
        return ("call_start", self.num_started - 1, new_call(name, ""))

    def _scan(self, text: str) -> int:
        """How much of `text` (starting inside or at the start of the current arguments) belongs to them: all of
        it, or up to where their outer braces close (the depth is then 0)."""
        for i, ch in enumerate(text):
            if self._in_string:
                self._escaped, self._in_string = (False, True) if self._escaped else (ch == "\\", ch != '"')
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(text)


def _begins_call(start: str) -> bool | None:
    """Whether an answer beginning `start` (stripped) is read as a call: None while it cannot be told yet. A call
    begins with a tag or `{"` (a JSON object's first key), or `[` then `{"`; so `[1] First...` or `{x}` is text
    from its second character on, and streams."""
    if not start or any(p.startswith(start) for p in (HERMES_OPEN, MISTRAL_PREFIX)):
        return None
    if start.startswith((HERMES_OPEN, MISTRAL_PREFIX)):
        return True
    if start[0] == "[":
        start = start[1:].lstrip()
        if not start:
            return None
    if start[0] != "{":
        return False
    rest = start[1:].lstrip()
    return None if not rest else rest[0] == '"'


def _partial_tag_length(text: str) -> int:
    """The length of the longest end of `text` that begins `<tool_call>` (held back: the tag may be arriving)."""
    for n in range(min(len(HERMES_OPEN) - 1, len(text)), 0, -1):
        if HERMES_OPEN.startswith(text[-n:]):
            return n
    return 0
