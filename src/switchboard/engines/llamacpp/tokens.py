"""llama.cpp's own prompt token counts, in the gateway's process: the GGUF's vocabulary and chat template
loaded vocabulary-only (no weights; about half a second and a few MB), run through llama-cpp-python's own
code path, so context-length checks and per-key token limits see the numbers the worker will.

How "its own code path": a chat request goes through the same chat handler the worker's `Llama` would pick
(the GGUF's template, or the format llama-cpp-python guesses from it), handed a stand-in `Llama` whose
`create_completion` captures the prompt tokens the handler built instead of generating. A completion's
prompt gets llama.cpp's begin/end-of-sequence rule for string prompts (`Llama._create_completion`).
tests/engines/test_llamacpp_tokens.py checks both against llama.cpp's `usage` exactly.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from switchboard.engines.llamacpp import templates, tools

log = logging.getLogger("switchboard.engines.llamacpp")

# What the worker hands its chat handler besides the prompt (engines/llamacpp/tools.py makes the tools part).
_CHAT_ARGS = ("response_format",)


class _Captured(Exception):
    def __init__(self, prompt: Any) -> None:
        super().__init__("prompt captured")
        self.prompt = prompt


class _CapturingLlama:
    """The `Llama` a chat handler is handed: everything is the real (vocabulary-only) one's but
    `create_completion`, which raises the prompt it was given."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: Any, **_: Any) -> Any:
        raise _Captured(prompt)


def empty_prompt_tokens(llm: Any) -> list[int]:
    """What an empty completion prompt is evaluated as on a model that adds no begin token (SmolLM2): its
    end-of-sequence token, so generation starts after a finished text — OpenAI's empty prompt starts from its
    document separator. (llama-cpp-python asserts on a prompt of no tokens: once the replica's 500.)"""
    return [llm.token_eos()]


class PromptTokenCounter:
    """Counts prompts for one GGUF model. Not thread-safe (llama.cpp objects are not): one caller at a time."""

    def __init__(self, llm: Any) -> None:
        from llama_cpp import llama_chat_format

        self.llm = llm
        # Llama.create_chat_completion's own choice of handler (the per-template handlers have no public accessor).
        self.chat_handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
                             or llama_chat_format.get_chat_completion_handler(llm.chat_format))

    @classmethod
    def load(cls, model_path: str | Path, n_ctx: int, chat_template: str | None = None) -> "PromptTokenCounter":
        """The counter of a GGUF, with the config's `chat_template` text (the worker's) instead of its own if given."""
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, n_ctx=n_ctx, verbose=False)
        if chat_template:
            templates.use_template(llm, chat_template)
        return cls(llm)

    def chat_tokens(self, body: dict[str, Any]) -> list[int]:
        """The prompt tokens llama.cpp evaluates for a chat request `body` (messages, tools, response format)."""
        tool_plan = tools.plan(body)
        kwargs = {k: body[k] for k in _CHAT_ARGS if body.get(k) is not None}  # a grammar adds no prompt tokens
        prompt_args = tools.chat_prompt(body, tool_plan, tools.template_reads_tools(self.llm.metadata.get("tokenizer.chat_template")))
        try:
            self.chat_handler(llama=_CapturingLlama(self.llm), stream=False, **prompt_args, **kwargs)
        except _Captured as captured:
            prompt = captured.prompt
            return list(prompt) if not isinstance(prompt, str) else self.completion_tokens(prompt)
        raise RuntimeError("the chat handler generated without calling create_completion")

    def completion_tokens(self, prompt: str) -> list[int]:
        """The prompt tokens llama.cpp evaluates for a string prompt (`Llama._create_completion`'s rule, and
        `empty_prompt_tokens` for a prompt that would have none)."""
        llm, model = self.llm, self.llm._model
        cls_id, sep_id = model.token_cls(), model.token_sep()
        bos = [cls_id if cls_id != -1 else llm.token_bos()]
        if not model.add_bos_token() or bos == [-1]:
            bos = []
        eos = [sep_id if sep_id != -1 else llm.token_eos()] if model.add_eos_token() or sep_id != -1 else []
        return (bos + (llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []) + eos
                or empty_prompt_tokens(llm))

    def count(self, kind: str, body: dict[str, Any]) -> int:
        """The prompt tokens of a chat or a completion request; of several prompts, the longest's."""
        if kind == "chat":
            return len(self.chat_tokens(body))
        prompt = body.get("prompt", "")
        if isinstance(prompt, str):
            return len(self.completion_tokens(prompt))
        if prompt and all(isinstance(t, int) for t in prompt):  # token ids: evaluated as given, no begin or end token added
            return len(prompt)
        # several: each is generated alone
        return max((len(p) if isinstance(p, list) else len(self.completion_tokens(p)) for p in prompt), default=0)


class PromptTokens:
    """The gateway's counters, one per llama.cpp expert, loaded on first use in a thread. An expert whose
    model cannot be loaded here keeps the caller's estimate (logged once): counting must never fail a
    request that the worker could serve."""

    def __init__(self) -> None:
        self._counters: dict[str, PromptTokenCounter | None] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def count(self, kind: str, body: dict[str, Any], expert: Any, estimate: int) -> int:
        """llama.cpp's count of the prompt if `expert` (an ExpertConfig, or None) is a llama.cpp expert, else
        `estimate`."""
        exact = await self.exact(kind, body, expert)
        return estimate if exact is None else exact

    async def exact(self, kind: str, body: dict[str, Any], expert: Any) -> int | None:
        """llama.cpp's count of the prompt, or None when there is none: not a llama.cpp expert, its model not
        loadable here, or a request its template cannot render."""
        if expert is None or getattr(expert.backend, "kind", None) != "llamacpp":
            return None
        counter = await self._counter(expert)
        if counter is None:
            return None
        try:
            return counter.count(kind, body)
        except Exception as exc:  # noqa: BLE001 — a template that cannot render this request: the worker will say so
            log.debug("counting the prompt for %s failed (%s: %s); using the estimate", expert.id, type(exc).__name__, exc)
            return None

    def preload(self, experts: Any) -> None:
        """Starts loading the counters of the llama.cpp experts among `experts` in the background (call on the
        event loop): the vocabulary load (~0.1 s for SmolLM2) would otherwise land on the first request to each
        expert after the gateway starts, on top of that request's cold start."""
        for expert in experts:
            if getattr(expert.backend, "kind", None) == "llamacpp" and expert.id not in self._loading:
                self._loading[expert.id] = asyncio.ensure_future(asyncio.to_thread(self._load, expert))

    @property
    def expert_ids(self) -> set[str]:
        """The experts whose counters are loading or loaded."""
        return set(self._loading)

    async def _counter(self, expert: Any) -> PromptTokenCounter | None:
        if expert.id in self._counters:
            return self._counters[expert.id]
        if expert.id not in self._loading:
            self._loading[expert.id] = asyncio.ensure_future(asyncio.to_thread(self._load, expert))
        counter = await asyncio.shield(self._loading[expert.id])
        self._counters[expert.id] = counter
        return counter

    @staticmethod
    def _load(expert: Any) -> PromptTokenCounter | None:
        from switchboard.engines.llamacpp.paths import default_model_path

        model_path = expert.backend.model_path or default_model_path()
        try:
            return PromptTokenCounter.load(model_path, expert.context_tokens, expert.backend.chat_template)
        except Exception as exc:  # noqa: BLE001
            log.warning("expert %s: cannot load the vocabulary of %s here (%s: %s); prompt lengths are estimated",
                        expert.id, model_path, type(exc).__name__, exc)
            return None
