"""Streams and the response cache (pure): a streamed answer assembled into the ``ChatCompletion`` it stands for,
and a stored ``ChatCompletion`` replayed as the SSE chunks a stream of it would have carried.

One stored form serves both kinds of request (issue 6): a non-streamed entry can answer a streamed request and a
streamed one a plain request. The chunks follow OpenAI's stream (``CreateChatCompletionStreamResponse``): the role
on the first chunk of each choice, tool calls with their index, a last chunk per choice with the finish reason and
an empty delta, and, when the client asked for usage, ``"usage": null`` on every ordinary chunk plus one last chunk
with no choices that carries the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aigw.providers.base import StreamIdentity

__all__ = ["StreamAssembler", "replay_chunks"]


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None


class StreamAssembler:
    """Fed every chunk a stream delivers; says whether the stream made a whole answer worth storing.

    A stream is only stored when every choice ended with a finish reason and nothing unusual went by: an error
    event, log probabilities (not kept), or a chunk that is not JSON spoil it, and the answer is simply not cached.
    """

    __slots__ = ("_choices", "_model", "_spoiled", "_system_fingerprint")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._model: str | None = None
        self._system_fingerprint: str | None = None
        self._spoiled = False

    def feed(self, chunk: bytes) -> None:
        if self._spoiled:
            return
        try:
            data = orjson.loads(chunk)
            self._take(data)
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
            self._spoiled = True

    def _take(self, data: dict[str, Any]) -> None:
        if "error" in data:
            self._spoiled = True
            return
        if self._model is None and isinstance(data.get("model"), str):
            self._model = data["model"]
        if isinstance(data.get("system_fingerprint"), str):
            self._system_fingerprint = data["system_fingerprint"]
        for c in data.get("choices") or ():
            if c.get("logprobs") is not None:
                self._spoiled = True
                return
            choice = self._choices.setdefault(int(c["index"]), _Choice())
            delta = c.get("delta") or {}
            text = delta.get("content")
            if text is not None:
                choice.content.append(str(text))
            if delta.get("refusal") is not None:
                choice.refusal.append(str(delta["refusal"]))
            for tc in delta.get("tool_calls") or ():
                call = choice.tool_calls.setdefault(int(tc["index"]), _ToolCall())
                if tc.get("id"):
                    call.id = str(tc["id"])
                if tc.get("type"):
                    call.type = str(tc["type"])
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call.name += str(fn["name"])
                if fn.get("arguments"):
                    call.arguments.append(str(fn["arguments"]))
            if c.get("finish_reason") is not None:
                choice.finish_reason = str(c["finish_reason"])

    @property
    def complete(self) -> bool:
        return (
            not self._spoiled
            and self._model is not None
            and bool(self._choices)
            and all(c.finish_reason is not None for c in self._choices.values())
            and all(t.id is not None for c in self._choices.values() for t in c.tool_calls.values())
        )

    def choices(self) -> list[dict[str, Any]]:
        """The ``ChatCompletion`` choices the chunks so far amount to (also of an unfinished stream)."""
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            text = "".join(c.content)
            message: dict[str, Any] = {
                "role": "assistant",
                # As OpenAI's own: null content for an answer of tool calls only.
                "content": text if text or not c.tool_calls else None,
                "refusal": "".join(c.refusal) if c.refusal else None,
            }
            if c.tool_calls:
                message["tool_calls"] = [
                    {"id": t.id, "type": t.type, "function": {"name": t.name, "arguments": "".join(t.arguments)}}
                    for _, t in sorted(c.tool_calls.items())
                ]
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": c.finish_reason})
        return choices

    def completion(self, ident: StreamIdentity, usage: dict[str, Any]) -> bytes:
        """The ``ChatCompletion`` body this stream amounts to (call only when :attr:`complete`)."""
        choices = self.choices()
        body: dict[str, Any] = {
            "id": ident.id,
            "object": "chat.completion",
            "created": ident.created,
            "model": self._model,
            "choices": choices,
            "usage": usage,
        }
        if self._system_fingerprint is not None:
            body["system_fingerprint"] = self._system_fingerprint
        return orjson.dumps(body)


def replay_chunks(completion: dict[str, Any], ident: StreamIdentity, include_usage: bool) -> list[bytes]:
    """The chunk JSON (without SSE framing) of a stream carrying ``completion``, stamped with ``ident``."""
    head: dict[str, Any] = {
        "id": ident.id,
        "object": "chat.completion.chunk",
        "created": ident.created,
        "model": completion["model"],
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    tail = {"usage": None} if include_usage else {}
    out: list[bytes] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(orjson.dumps({**head, "choices": [choice], **tail}))

    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        first: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("refusal") is not None:
            first["refusal"] = message["refusal"]
        calls = message.get("tool_calls") or []
        if calls and not message.get("content"):  # tool calls only: the role rides on the tool-call chunk
            first.pop("content")
            first["tool_calls"] = [_call_delta(i, c) for i, c in enumerate(calls)]
            chunk(index, first)
        else:
            chunk(index, first)
            if calls:
                chunk(index, {"tool_calls": [_call_delta(i, c) for i, c in enumerate(calls)]})
        chunk(index, {}, choice["finish_reason"])
    if include_usage:
        out.append(orjson.dumps({**head, "choices": [], "usage": completion.get("usage")}))
    return out


def _call_delta(index: int, call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "index": index,
        "id": call["id"],
        "type": call.get("type", "function"),
        "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments", "")},
    }
