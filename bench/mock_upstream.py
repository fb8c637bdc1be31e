"""A fast OpenAI-shaped mock upstream for the benchmark: fixed answers, no work, so what is measured is the gateway."""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web

CHUNKS = 20
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764115200,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
)


def _chunk(delta: dict[str, object], finish: str | None = None, usage: object = None, choices: bool = True) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1764115200,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


STREAM = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": f"tok{i} "}) for i in range(CHUNKS))
    + _chunk({}, "stop")
    + _chunk({}, usage={"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}, choices=False)
    + b"data: [DONE]\n\n"
)
STREAM_PARTS = STREAM.split(b"\n\n")[:-1]


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    if not body.get("stream"):
        return web.Response(body=REPLY, content_type="application/json")
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for part in STREAM_PARTS:
        await resp.write(part + b"\n\n")
    await resp.write_eof()
    return resp


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
