"""The llama.cpp worker process: one GGUF model behind a tiny OpenAI-compatible HTTP server on loopback.

Run as `python -m switchboard.engines.llamacpp.worker --model PATH [--n-ctx N] [--threads T]`. It binds a
free loopback port itself and announces itself on stdout with one JSON line per phase, which the parent reads
to measure the cold-start anatomy:

    {"event": "started", "pid": ..., "t_import_s": ...}     interpreter up, llama.cpp imported
    {"event": "ready", "port": ..., "t_load_s": ..., "t_warmup_s": ..., "prefix_tokens": ..., "prefix_restored": ...}
                                   model loaded and warmed up (the chat template's prefix in the KV cache), listening

With `--standby` (and no model) it stops after "started" and waits for one line on stdin, the JSON list of
the arguments to go on with: a pre-started worker that a cold start adopts (`engines/llamacpp/pool.py`),
skipping the interpreter start and the imports.

Sleep mode, with vLLM's endpoints: `POST /sleep?level=1` (the default) frees the context and keeps the model
and a host copy of the KV cache's cells, `POST /sleep?level=2` frees the model too (the process, its imports
and its server stay either way); `POST /wake_up` makes a new context (level 1) or loads the model again from
the page cache and warms it up (level 2); `GET /is_sleeping`. While asleep a generation is answered 503.

After "ready" stdout is redirected to stderr so the parent never has to drain it. llama.cpp is not
thread-safe, so one generation runs at a time (a single-thread executor); others queue in arrival order.
Kept separate from the gateway's process so a slow decode never blocks its event loop and a crash takes
down only this replica.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from switchboard.engines.llamacpp import kv, templates, tools
from switchboard.engines.llamacpp.tokens import empty_prompt_tokens
from switchboard.engines.sockets import loopback_listener

_T0 = time.perf_counter()


def _announce(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


_SAMPLING_FIELDS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p")


_ANY_JSON = object()  # json_object: any JSON value, llama.cpp's JSON grammar


def _output_schema(asked: Any) -> Any:
    """What OpenAI's `response_format` asks the output to be: a JSON schema (json_schema), `_ANY_JSON`
    (json_object, or a json_schema without a schema), or None (text, or nothing)."""
    if not isinstance(asked, dict) or asked.get("type") not in ("json_object", "json_schema"):
        return None
    if asked["type"] == "json_schema":
        return (asked.get("json_schema") or {}).get("schema") or _ANY_JSON
    return _ANY_JSON


@functools.lru_cache(maxsize=64)
def _grammar_of(schema_json: str | None) -> Any:
    """llama.cpp's grammar admitting only JSON that matches the schema (any JSON for None). Cached: an agent
    sends the same tools, and so the same schema, every turn. Raises for a schema the converter cannot take."""
    from llama_cpp import llama_grammar

    if schema_json is None:
        return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    return llama_grammar.LlamaGrammar.from_json_schema(schema_json, verbose=False)


class InvalidRequest(ValueError):
    """A request this model cannot take as asked (the client's 400): a JSON schema that cannot be made a grammar,
    a logit bias for a token id outside its vocabulary."""


def grammar_for(schema: Any) -> Any:
    """The grammar for `_output_schema`'s answer or a tool plan's schema (None: no grammar). llama-cpp-python,
    handed a schema it cannot convert, quietly falls back to any JSON; here it is the client's 400 instead."""
    if schema is None:
        return None
    try:
        return _grammar_of(None if schema is _ANY_JSON else json.dumps(schema))  # key order is the output's: kept
    except Exception as exc:  # noqa: BLE001 — the converter raises assorted errors (unresolved $ref, bad types)
        raise InvalidRequest(f"the JSON schema cannot be made a grammar for llama.cpp: {type(exc).__name__}: {exc}") from None


def default_num_threads() -> int:
    """llama.cpp threads when the config gives none: half the cores, at least 1 (llama-cpp-python's own default).
    Not all of them: llama.cpp's threads meet at a barrier every layer, so one thread preempted by the gateway,
    the client or another replica stalls the rest. On the 2-core development machine one thread decodes
    SmolLM2-135M at 57 tokens/s bare and ~52 served through the gateway, two threads at 36 bare and 12-24
    served (docs/simulator.md, "Fidelity")."""
    return max(1, (os.cpu_count() or 1) // 2)


def _num_cached_prompt_tokens(previous_context: list[int], prompt: list[int]) -> int:
    """Prompt tokens llama-cpp-python took from the KV cache instead of evaluating (`Llama.generate`): the
    longest common prefix with the previous context, less one when the whole prompt matched (that token is
    re-evaluated to refresh the logits) unless the context was exactly the prompt."""
    num_common = 0
    for a, b in zip(previous_context, prompt):
        if a != b:
            break
        num_common += 1
    if prompt and num_common == len(prompt) and len(previous_context) != len(prompt):
        return num_common - 1
    return num_common


def _counting(llama_class: Any) -> Any:
    """`llama_cpp.Llama` that remembers, for its latest generation, the prompt tokens it evaluated and how many
    tokens it generated, counted as llama.cpp's own `usage` counts them (every token its sampler yielded but an
    end-of-generation one: `_create_completion` appends each such token before it checks for stops).

    With `num_top_logprobs` set (None: off), it also appends each such token's logprobs to `sampled_logprobs`,
    from the logits it was sampled from (engines/llamacpp/logprobs.py). With `num_top_prompt_logprobs` set, it
    first scores the prompt: each prompt token's logprob given the tokens before it, in `prompt_logprobs`
    (an echo's logprobs, what scoring clients such as lm-eval's loglikelihood read)."""
    import llama_cpp
    import numpy as np

    from switchboard.engines.llamacpp.logprobs import TokenLogprob, token_logprob

    class CountingLlama(llama_class):
        last_prompt_tokens: list[int] = []
        num_completion_tokens = 0
        num_top_logprobs: int | None = None
        sampled_logprobs: list[TokenLogprob] = []
        num_top_prompt_logprobs: int | None = None
        prompt_logprobs: list[TokenLogprob] = []

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
            self.last_prompt_tokens = list(tokens)
            self.num_completion_tokens = 0
            if self.num_top_prompt_logprobs is not None:
                self.prompt_logprobs = self._score(self.last_prompt_tokens, self.num_top_prompt_logprobs)
            for token in super().generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    self.num_completion_tokens += 1
                    if self.num_top_logprobs is not None:
                        # Llama.generate evaluates, samples, yields, and evaluates the token only when resumed:
                        # the context's last logits are still the ones this token was sampled from.
                        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self.n_vocab(),))
                        self.sampled_logprobs.append(token_logprob(logits, token, self.num_top_logprobs, self.piece))
                yield token

        def _score(self, tokens: list[int], num_top: int) -> list[TokenLogprob]:
            """Evaluates `tokens` from the start of the context, keeping the logits of every position a few rows at
            a time (not llama-cpp-python's `logits_all`, which holds n_ctx × vocabulary floats for every request);
            returns each token's logprob given those before it (the first has none). The context is then the
            prompt: `generate` takes it as its cached prefix and re-evaluates only the last token."""
            self._ctx.kv_cache_seq_rm(-1, 0, -1)  # the positions whose logits are wanted must all be evaluated
            self.n_tokens = 0
            num_vocab = self.n_vocab()
            out = [TokenLogprob(self.piece(tokens[0]), None, ())] if tokens else []
            step = max(1, min(64, self.n_batch))  # 64 rows × the vocabulary: 12 MB of floats for SmolLM2
            for start in range(0, len(tokens), step):
                batch = tokens[start:start + step]
                self._batch.set_batch(batch=batch, n_past=self.n_tokens, logits_all=True)
                self._ctx.decode(self._batch)
                self.input_ids[self.n_tokens:self.n_tokens + len(batch)] = batch
                self.n_tokens += len(batch)
                rows = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(len(batch), num_vocab))
                for row, following in enumerate(tokens[start + 1:start + 1 + len(batch)]):  # row i predicts token i + 1
                    out.append(token_logprob(rows[row], following, num_top, self.piece))
            return out

        def piece(self, token: int) -> bytes:
            """A token's bytes (cached: the top alternatives repeat, and each lookup is a ctypes call)."""
            pieces = self.__dict__.setdefault("_pieces", {})
            if token not in pieces:
                pieces[token] = self.detokenize([token])
            return pieces[token]

    return CountingLlama


class _Generator:
    """Runs llama.cpp generations one at a time on a dedicated thread and bridges chunks to asyncio. Sleep and
    wake run on the same thread, so they wait for the generation in progress and never overlap one.

    Sleep levels (vLLM's numbering): 1 frees the context (KV cache, compute and output buffers) and keeps the
    model loaded (its weights are the GGUF file's pages, mmapped) and a host copy of the KV cache's used cells;
    wake makes a new context and puts the cells back (milliseconds, and the next request still reuses its
    common prefix with them). 2 frees the model too; wake loads it again (from the page cache) and warms it up.
    """

    def __init__(self, load: Any) -> None:
        self.load = load  # () -> a loaded, warmed-up Llama
        self.llm: Any = load()
        self.sleep_level = 0  # 0 awake; 1 or 2 asleep at that level
        self._asleep: tuple[Any, kv.KvSnapshot] | None = None  # level 1: the Llama without a context, its cells
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.num_cancelled = 0
        """Generations ended early because their client left (`/health`)."""

    @property
    def is_asleep(self) -> bool:
        return self.llm is None

    @property
    def num_kept_kv_bytes(self) -> int:
        """Bytes of KV cells held on the host while asleep at level 1 (0 otherwise)."""
        return self._asleep[1].num_bytes if self._asleep is not None else 0

    def _sleep(self, level: int) -> None:
        if self.llm is not None:
            if level == 1:
                snapshot = kv.take_snapshot(self.llm)
                kv.free_context(self.llm)
                self._asleep = (self.llm, snapshot)
            else:
                self.llm.close()  # frees the weights, the KV cache and the compute buffers
            self.llm = None
            self.sleep_level = level
        elif level == 2 and self._asleep is not None:  # deeper: level 1 to 2 frees the model as well
            self._asleep[0].close()
            self._asleep = None
            self.sleep_level = 2

    def _wake(self) -> None:
        if self.llm is not None:
            return
        if self._asleep is not None:
            llm, snapshot = self._asleep
            kv.new_context(llm)
            kv.restore_snapshot(llm, snapshot)  # if refused, the cache starts empty: slower, still correct
            self._asleep = None
            self.llm = llm
        else:
            self.llm = self.load()
        self.sleep_level = 0

    async def sleep(self, level: int = 1) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._sleep, level)

    async def wake(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._wake)

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: body[k] for k in _SAMPLING_FIELDS if body.get(k) is not None}
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        # 0 (with echo: score the prompt only) generates one token, which `_run` drops: llama-cpp-python reads 0 as "no limit".
        kwargs["max_tokens"] = asked if asked else 1 if body.get("max_tokens") == 0 else 256
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = [kwargs["stop"]]
        if body.get("repetition_penalty") is not None:
            kwargs["repeat_penalty"] = body["repetition_penalty"]
        if body.get("logit_bias"):
            num_vocab = self.llm.n_vocab()
            if outside := [t for t in body["logit_bias"] if not 0 <= int(t) < num_vocab]:
                raise InvalidRequest(f"logit_bias: token id {outside[0]} is not in the model's vocabulary (0-{num_vocab - 1})")
            kwargs["logit_bias"] = body["logit_bias"]
        return kwargs

    def _completion_prompt(self, prompt: Any) -> str | list[int]:
        """A legacy completion's one prompt as llama-cpp-python takes it: text, or token ids of this model's
        vocabulary (evaluated as given; an id outside it is the client's error, which llama.cpp would not catch)."""
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = "".join(prompt)  # one prompt, in a list (the gateway sends several one by one)
        elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]  # one token-id prompt, in a list
        if isinstance(prompt, list):
            num_vocab = self.llm.n_vocab()
            if outside := [t for t in prompt if not (isinstance(t, int) and 0 <= t < num_vocab)]:
                raise InvalidRequest(f"prompt: token id {outside[0]} is not in the model's vocabulary (0-{num_vocab - 1})")
            return list(prompt)
        if not prompt and not self.llm._model.add_bos_token():  # no tokens at all: llama-cpp-python asserts
            return empty_prompt_tokens(self.llm)  # as the gateway's counter counts it
        return prompt

    def _run(self, kind: str, body: dict[str, Any], emit: Any, cancelled: threading.Event) -> None:
        from switchboard.engines.llamacpp.logprobs import Aligner, num_top_asked, prompt_aligned

        if self.llm is None:
            emit(("asleep", "the model is asleep (POST /wake_up loads it)"))
            return
        llm = self.llm
        llm.num_top_logprobs, llm.sampled_logprobs = num_top_asked(kind, body), []
        echo = kind == "completion" and body.get("echo") is True  # the prompt, then the answer (and with logprobs, the prompt's)
        score_only = echo and body.get("max_tokens") == 0  # the prompt (scored), and no answer
        llm.num_top_prompt_logprobs = llm.num_top_logprobs if echo else None
        echo_text = ""
        try:
            previous_context = self.llm._input_ids.tolist()  # what the KV cache holds before this request
            output = tools.OutputFilter(tools.ToolPlan("none", {}))
            tool_plan = None
            try:
                kwargs = self._kwargs(body)
                if kind == "chat":
                    tool_plan = tools.plan(body)
                # Named or required tools: the grammar makes the call; else the response format's, if any.
                schema = tool_plan.schema() if tool_plan is not None else None
                kwargs["grammar"] = grammar_for(schema if schema is not None else _output_schema(body.get("response_format")))
                if schema is not None:
                    kwargs.pop("stop", None)  # the grammar ends a call; a stop sequence inside it would only cut it
            except (tools.ToolRequestError, InvalidRequest) as exc:
                emit(("invalid", str(exc)))
                return
            if tool_plan is not None:
                output = tools.OutputFilter(tool_plan)
                reads_tools = tools.template_reads_tools(self.llm.metadata.get("tokenizer.chat_template"))
                try:
                    chunks = self.llm.create_chat_completion(**tools.chat_prompt(body, tool_plan, reads_tools), stream=True, **kwargs)
                except Exception as exc:  # noqa: BLE001 — raised before generation: the template refused this
                    # request (a role order it forbids, anything it raises), not the replica
                    # failing: the client's 400, never a 5xx that would retry it and trip the circuit breaker.
                    emit(("invalid", f"the model's chat template cannot format this request: {type(exc).__name__}: {exc}"))
                    return
            else:
                try:
                    prompt = self._completion_prompt(body["prompt"])
                except InvalidRequest as exc:
                    emit(("invalid", str(exc)))
                    return
                if echo:  # the prompt as sent (token ids: as their text)
                    echo_text = prompt if isinstance(prompt, str) else self.llm.detokenize(prompt).decode("utf-8", errors="replace")
                chunks = self.llm.create_completion(prompt=prompt, stream=True, **kwargs)
            finish = None
            aligner = Aligner(llm.sampled_logprobs, len(echo_text)) if llm.num_top_logprobs is not None else None
            began_at, first_at = time.perf_counter(), None  # the generation's own timing (`_timings`)
            for chunk in chunks:
                if cancelled.is_set():
                    chunks.close()
                    self.num_cancelled += 1  # this thread is the only writer
                    emit(("cancelled", None))
                    return
                if echo and first_at is None:  # the prompt is evaluated (and scored): it comes first
                    emit(("text", echo_text, prompt_aligned(llm.prompt_logprobs) if llm.num_top_prompt_logprobs is not None else None))
                    if score_only:
                        chunks.close()
                        first_at, finish = time.perf_counter(), "length"
                        llm.num_completion_tokens = 0
                        break
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content") if kind == "chat" else choice.get("text")
                tokens = aligner.take(text or "") if aligner is not None else None
                if first_at is None:
                    first_at = time.perf_counter()  # the prompt is evaluated and the first token sampled
                if text or tokens:
                    for event in output.feed(text or "", tokens):
                        emit(event)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if aligner is not None and (rest := aligner.rest()):
                for event in output.feed("", rest):
                    emit(event)
            last, finish = output.close(finish or "stop")
            for event in last:
                emit(event)
            # llama.cpp's stream carries no usage: its counts, as its whole answers give them, from the tokens
            # its generate() was given and yielded (see _counting).
            prompt = self.llm.last_prompt_tokens
            # A scored prompt was evaluated whole (its every position's logits were wanted): nothing came from the cache.
            num_cached = _num_cached_prompt_tokens(previous_context, prompt) if llm.num_top_prompt_logprobs is None else 0
            ended_at = time.perf_counter()
            emit(("finish", {"reason": finish, "prompt_tokens": len(prompt),
                             "completion_tokens": self.llm.num_completion_tokens, "cached_tokens": num_cached,
                             "prefill_s": (first_at or ended_at) - began_at, "decode_s": ended_at - (first_at or ended_at)}))
        except ValueError as exc:  # llama-cpp-python raises ValueError for prompts over the context window
            emit(("rejected", str(exc)))
        except Exception as exc:  # noqa: BLE001 — reported to the client as this replica's failure
            emit(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            llm.num_top_logprobs = llm.num_top_prompt_logprobs = None  # logprobs cost nothing when the next request does not ask

    async def events(self, kind: str, body: dict[str, Any]):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self.executor.submit(self._run, kind, body, emit, cancelled)
        try:
            while True:
                item = await queue.get()
                yield item
                if item[0] in ("finish", "rejected", "invalid", "error", "cancelled", "asleep"):
                    return
        finally:
            cancelled.set()


async def _unless_client_leaves(request: Any, answer: Any, events: Any) -> Any:
    """`answer`'s response (an awaitable); if the client leaves first, the generation is ended (its thread stops at
    the next token: `events` closes) and nothing is sent. A whole (non-streamed) answer otherwise ran to its end
    after its client had gone — a gateway whose request was cancelled or timed out — holding the worker's one
    sequence from the requests behind it. (A stream's response notices by itself: Starlette's StreamingResponse.)"""
    work = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    await events.aclose()
    from starlette.responses import Response

    return Response(status_code=499)  # read by no one: the connection is gone


async def _client_left(request: Any) -> None:
    """Returns once the client has disconnected (the body was read whole before: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _timings(info: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's server's `timings` object, for its fields the control plane reads: `prompt_n` prompt tokens
    evaluated (those not reused from the KV cache) in `prompt_ms` (until the first token was sampled), then
    `predicted_n` more tokens in `predicted_ms`. The gateway measures the worker's speed by them
    (`engines.base.Usage.timing`); a client never sees them (the gateway builds its own answer)."""
    return {"prompt_n": info["prompt_tokens"] - info["cached_tokens"], "prompt_ms": info["prefill_s"] * 1000,
            "predicted_n": max(0, info["completion_tokens"] - 1), "predicted_ms": info["decode_s"] * 1000}


def _usage(info: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
            "total_tokens": info["prompt_tokens"] + info["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": info["cached_tokens"]}}


def build_app(generator: _Generator, model_name: str, n_ctx: int, load_s: float):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from switchboard.engines.llamacpp.logprobs import chat_logprobs, completion_logprobs, num_top_asked

    def error(status: int, message: str, code: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                       "param": None, "code": code}},
            status_code=status,
        )

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "model": model_name, "n_ctx": n_ctx, "load_s": load_s, "pid": os.getpid(),
                             "is_sleeping": generator.is_asleep, "sleep_level": generator.sleep_level,
                             "kept_kv_bytes": generator.num_kept_kv_bytes, "num_cancelled": generator.num_cancelled})

    async def sleep(request: Request) -> Response:
        level = request.query_params.get("level", "1")
        if level not in ("1", "2"):
            return error(400, f"level must be 1 or 2, not {level!r}", "invalid_sleep_level")
        await generator.sleep(int(level))
        return Response(status_code=200)

    async def wake_up(_: Request) -> Response:
        await generator.wake()
        return Response(status_code=200)

    async def is_sleeping(_: Request) -> Response:
        return JSONResponse({"is_sleeping": generator.is_asleep, "sleep_level": generator.sleep_level})

    async def generate(request: Request, kind: str) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "body is not JSON", "invalid_json")
        events = generator.events(kind, body)
        first = await events.__anext__()
        if first[0] == "rejected":
            return error(400, first[1], "context_length_exceeded")
        if first[0] == "invalid":
            return error(400, first[1], "invalid_request")
        if first[0] == "error":
            return error(500, first[1], "engine_error")
        if first[0] == "asleep":
            return error(503, first[1], "engine_asleep")
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        format_logprobs = chat_logprobs if kind == "chat" else completion_logprobs

        def choice(text: str | None, finish: str | None, tokens: list | None, *, stream: bool,
                   calls: list | None = None) -> dict[str, Any]:
            logprobs = format_logprobs(tokens) if tokens is not None else None
            if kind == "chat":
                key = "delta" if stream else "message"
                content: dict[str, Any] = {"content": text} if stream else {"role": "assistant", "content": text}
                if calls and stream:
                    content = {"tool_calls": calls}  # deltas, indexed
                elif calls:
                    content = {"role": "assistant", "content": text or None, "tool_calls": calls}
                return {"index": 0, key: content if text is not None or calls else {}, "logprobs": logprobs, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}

        async def whole() -> Response:
            """The answer in one body: every event read, then one JSON response."""
            parts: list[str] = []
            tokens: list | None = [] if num_top_asked(kind, body) is not None else None
            calls: list | None = None
            item = first
            while item[0] in ("text", "tool_calls", "call_start", "call_args"):
                if item[0] == "tool_calls":
                    calls = item[1]
                elif item[0] == "call_start":
                    calls = [*(calls or []), item[2]]
                elif item[0] == "call_args":
                    assert calls is not None
                    calls[item[1]]["function"]["arguments"] += item[2]
                else:
                    parts.append(item[1])
                    if tokens is not None:
                        tokens += item[2] or ()
                item = await events.__anext__()
            if item[0] != "finish":
                return error(500, str(item[1]), "engine_error")
            info = item[1]
            return JSONResponse({
                "id": rid, "object": obj, "created": created, "model": model_name,
                "choices": [choice("".join(parts), info["reason"], tokens, stream=False, calls=calls)],
                "usage": _usage(info), "timings": _timings(info),
            })

        if not body.get("stream"):
            return await _unless_client_leaves(request, whole(), events)

        async def sse():
            chunk_obj = obj + (".chunk" if kind == "chat" else "")
            item = first
            try:
                while True:
                    if item[0] == "text":
                        data = {"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [choice(item[1], None, item[2], stream=True)]}
                    elif item[0] == "tool_calls":  # auto: each call whole, in one chunk (as llama.cpp's server streams them)
                        data = {"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [choice(None, None, None, stream=True, calls=[{"index": i, **c} for i, c in enumerate(item[1])])]}
                    elif item[0] in ("call_start", "call_args"):  # named, required: as generated, as OpenAI streams them
                        delta = {"index": item[1], **item[2]} if item[0] == "call_start" else {"index": item[1], "function": {"arguments": item[2]}}
                        data = {"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [choice(None, None, None, stream=True, calls=[delta])]}
                    elif item[0] == "finish":
                        info = item[1]
                        data = {"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [choice(None, info["reason"], None, stream=True)]}
                        yield f"data: {json.dumps(data)}\n\n"
                        data = {"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                "choices": [], "usage": _usage(info), "timings": _timings(info)}
                        yield f"data: {json.dumps(data)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        yield f"data: {json.dumps({'error': {'message': str(item[1]), 'type': 'server_error'}})}\n\n"
                        return
                    yield f"data: {json.dumps(data)}\n\n"
                    item = await events.__anext__()
            finally:
                await events.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    return Starlette(routes=[
        Route("/health", health),
        Route("/sleep", sleep, methods=["POST"]),
        Route("/wake_up", wake_up, methods=["POST"]),
        Route("/is_sleeping", is_sleeping),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ])


def _server_config(uvicorn: Any, app: Any) -> Any:
    # No websockets: the worker serves none, and uvicorn would import a websockets library for them.
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none")


PARENT_CHECK_INTERVAL_S = 1.0


def _exit_with_parent() -> None:
    """Ends this worker once its parent (the gateway, or a Ray replica actor) is gone, even if the parent was
    killed without stopping it: an orphaned worker would hold its memory and CPU forever."""
    parent_pid = os.getppid()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Switchboard llama.cpp worker")
    parser.add_argument("--model", default=None)
    parser.add_argument("--standby", action="store_true", help="import, announce 'started', then read the arguments from stdin")
    parser.add_argument("--name", default="llamacpp")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--threads-batch", type=int, default=None, help="prompt-processing threads; default: --threads")
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-template", default=None, help="a Jinja chat template's text, used instead of the GGUF's")
    parser.add_argument("--prefix-cache-dir", default=None,
                        help="where the chat template prefix's KV cells are kept across processes; none: not kept")
    args = parser.parse_args(argv)
    _exit_with_parent()

    import llama_cpp
    import starlette.applications  # noqa: F401 — imported now so a standby worker has nothing left to import
    import starlette.requests  # noqa: F401
    import starlette.responses  # noqa: F401
    import uvicorn

    # uvicorn imports its protocol and event-loop modules when its config is loaded, which would come after
    # "ready", on the first request's path (10-45 ms here): load a config now, before a standby worker waits.
    _server_config(uvicorn, build_app(None, "", 0, 0.0)).load()
    _announce({"event": "started", "pid": os.getpid(), "t_import_s": time.perf_counter() - _T0})
    if args.standby:
        line = sys.stdin.readline()
        if not line:
            return  # the pool closed without handing this worker a model
        args = parser.parse_args(json.loads(line))
    if not args.model:
        parser.error("--model is required")
    num_threads = args.threads or default_num_threads()
    timings: dict[str, float] = {}

    def load() -> Any:
        t_load = time.perf_counter()
        # Prompt processing gets as many threads as decode, not llama-cpp-python's default of every core: its
        # threads meet at a barrier every layer too, and on a shared machine one preempted thread stalls them all.
        llm = _counting(llama_cpp.Llama)(
            model_path=args.model, n_ctx=args.n_ctx, n_threads=num_threads,
            n_threads_batch=args.threads_batch or num_threads, n_batch=args.n_batch, seed=args.seed, verbose=False,
        )
        if args.chat_template:
            templates.use_template(llm, args.chat_template)
        timings["load_s"] = time.perf_counter() - t_load
        # Before serving, what the first request would otherwise pay: one decode (faults the memory-mapped
        # weights in, builds llama.cpp's compute graph: measured several seconds here once) and the chat
        # template's shared prefix in the KV cache (~0.14 s of the first request's 0.19 s on SmolLM2), restored
        # from its file when an earlier worker wrote one (engines/llamacpp/kv.py).
        t_warmup = time.perf_counter()
        warm = kv.warm_up(llm, args.model, Path(args.prefix_cache_dir) if args.prefix_cache_dir else None)
        timings["warmup_s"] = time.perf_counter() - t_warmup
        timings["prefix_tokens"] = warm.num_prefix_tokens
        timings["prefix_restored"] = warm.is_restored
        return llm

    generator = _Generator(load)
    load_s, warmup_s = timings["load_s"], timings["warmup_s"]
    sock = loopback_listener()  # TCP_NODELAY on its connections: no 40 ms delayed-ACK stall per response
    port = sock.getsockname()[1]
    # Listening before announcing "ready": connections that arrive before uvicorn's loop runs wait in the
    # backlog instead of being refused.
    sock.listen(128)
    app = build_app(generator, args.name, args.n_ctx, load_s)
    config = _server_config(uvicorn, app)
    config.load()
    server = uvicorn.Server(config)
    _announce({"event": "ready", "port": port, "t_load_s": load_s, "t_warmup_s": warmup_s, "n_ctx": args.n_ctx,
               "t_ready_s": time.perf_counter() - _T0, "prefix_tokens": timings["prefix_tokens"],
               "prefix_restored": timings["prefix_restored"]})
    sys.stdout = sys.stderr
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
