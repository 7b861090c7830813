"""A stand-in for `vllm serve` on machines without a GPU: vLLM's OpenAI routes and its sleep-mode calls.

Run as `python -m switchboard.testing.fake_vllm --port P --model NAME [--wake-s S] [--start-s S]`. It speaks
the parts of vLLM's HTTP API that the `process` backend uses, with vLLM's semantics:

- `GET /health` (200 once started), `GET /v1/models`
- `POST /v1/chat/completions`, `POST /v1/completions` (whole or SSE-streamed, with usage): the answer is
  `fake vllm answer N` words, one per token, up to max_tokens (default 16)
- `POST /sleep?level=1|2`, `POST /wake_up`, `GET /is_sleeping` (vLLM's dev-mode sleep endpoints). While asleep
  a generation request is answered 503, as vLLM cannot run a model whose weights are off the device.

`--wake-s` delays each wake (a model's weights coming back), `--start-s` delays readiness (a model load).
Every generation is counted in `GET /stats` so tests can check that each request reached a server once; it
also shows the `CUDA_VISIBLE_DEVICES` the server was given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any


def build_app(model: str, *, wake_s: float = 0.0, start_s: float = 0.0):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    state: dict[str, Any] = {"sleep_level": 0, "num_generations": 0, "num_sleeps": 0, "num_wakes": 0,
                             "last_request": None, "ready_at": time.monotonic() + start_s,
                             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    async def health(_: Request) -> Response:
        if time.monotonic() < state["ready_at"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake-vllm"}]})

    async def sleep(request: Request) -> Response:
        state["sleep_level"] = int(request.query_params.get("level", "1"))
        state["num_sleeps"] += 1
        return Response(status_code=200)

    async def wake_up(_: Request) -> Response:
        if state["sleep_level"] and wake_s:
            await asyncio.sleep(wake_s)
        state["sleep_level"] = 0
        state["num_wakes"] += 1
        return Response(status_code=200)

    async def is_sleeping(_: Request) -> Response:
        return JSONResponse({"is_sleeping": state["sleep_level"] > 0})

    async def stats(_: Request) -> Response:
        return JSONResponse(state)

    async def generate(request: Request, kind: str) -> Response:
        if state["sleep_level"]:
            return JSONResponse({"error": {"message": "the engine is sleeping", "type": "server_error", "code": 503}},
                                status_code=503)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, status_code=400)
        if body.get("model") != model:
            return JSONResponse({"error": {"message": f"model {body.get('model')!r} does not exist", "type": "NotFoundError"}},
                                status_code=404)
        state["num_generations"] += 1
        state["last_request"] = body  # what reached the server, for tests of the gateway's pass-through
        num_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        words = [f"w{i}" for i in range(num_tokens)]
        words[:4] = ["fake", "vllm", "answer", str(num_tokens)][:num_tokens]
        usage = {"prompt_tokens": 7, "completion_tokens": num_tokens, "total_tokens": 7 + num_tokens}
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def choice(text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
            if kind == "chat":
                if stream:
                    return {"index": 0, "delta": {"content": text} if text is not None else {}, "finish_reason": finish}
                return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

        if not body.get("stream"):
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model,
                                 "choices": [choice(" ".join(words), "length", False)], "usage": usage})

        async def sse():
            chunk_obj = obj + (".chunk" if kind == "chat" else "")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                yield f"data: {json.dumps({'id': rid, 'object': chunk_obj, 'created': created, 'model': model, 'choices': [choice(piece, None, True)]})}\n\n"
            yield f"data: {json.dumps({'id': rid, 'object': chunk_obj, 'created': created, 'model': model, 'choices': [choice(None, 'length', True)]})}\n\n"
            yield f"data: {json.dumps({'id': rid, 'object': chunk_obj, 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models), Route("/stats", stats),
        Route("/sleep", sleep, methods=["POST"]), Route("/wake_up", wake_up, methods=["POST"]),
        Route("/is_sleeping", is_sleeping),
        Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/completions", completions, methods=["POST"]),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM server (OpenAI routes and sleep mode), for tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--wake-s", type=float, default=0.0)
    parser.add_argument("--start-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.model, wake_s=args.wake_s, start_s=args.start_s), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
