"""What the fake OpenAI model answers to a chat completion request, and how that is put on the wire."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import text

SYSTEM_FINGERPRINT = "fp_f4ke0d1e5c"
_ALNUM = string.ascii_letters + string.digits


@dataclass
class ChatPlan:
    prompt_tokens: int
    reply: text.TextReply | None = None
    tool_calls: list[text.PlannedToolCall] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return text.tool_call_tokens(self.tool_calls) if self.tool_calls else (self.reply.tokens if self.reply else 0)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else (self.reply.finish if self.reply else "stop")

    def usage(self) -> dict[str, Any]:
        p, c = self.prompt_tokens, self.completion_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def as_response(self, cid: str, created: int, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": cid_, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for cid_, c in zip(self.call_ids, self.tool_calls, strict=True)
            ]
        else:
            message["content"] = self.reply.content if self.reply else ""
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def as_chunks(self, cid: str, created: int, model: str, include_usage: bool) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                out["usage"] = None  # every chunk carries "usage": null, the extra last one the numbers
            return out

        chunks: list[dict[str, Any]] = []
        if self.tool_calls:
            # First chunk: role + content null + the first call's id/type/name with empty arguments; each further
            # call opens with such a header (only its index/id/type/name); arguments follow in fragments.
            for index, (call_id, call) in enumerate(zip(self.call_ids, self.tool_calls, strict=True)):
                header = {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                if index == 0:
                    chunks.append(
                        chunk({"role": "assistant", "content": None, "tool_calls": [header], "refusal": None})
                    )
                else:
                    chunks.append(chunk({"tool_calls": [header]}))
                chunks.extend(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
                    for frag in text.split_arguments(call.arguments_json)
                )
        else:
            chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            chunks.extend(chunk({"content": piece}) for piece in (self.reply.pieces if self.reply else []))
        chunks.append(chunk({}, self.finish_reason))
        if include_usage:
            last = chunk({})
            last["choices"] = []
            last["usage"] = self.usage()
            chunks.append(last)
        return chunks


def _last_text(messages: list[Any], roles: tuple[str, ...]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") in roles:
            return text.message_text(message)
    return ""


def _stop_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


def plan_chat(body: Mapping[str, Any]) -> ChatPlan:
    messages = [m for m in body["messages"] if isinstance(m, Mapping)]
    plan = ChatPlan(prompt_tokens=text.prompt_tokens(messages))
    last = messages[-1] if messages else {}
    tools = body.get("tools") or []
    tool_choice = body.get("tool_choice")
    if tools and tool_choice != "none" and last.get("role") == "user":
        named = None
        if isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping):
            named = str(tool_choice["function"].get("name"))
        plan.tool_calls = text.plan_tool_calls(
            tools,
            text.message_text(last),
            named=named,
            parallel_allowed=body.get("parallel_tool_calls") is not False,
        )
        plan.call_ids = ["call_" + "".join(secrets.choice(_ALNUM) for _ in range(24)) for _ in plan.tool_calls]
        if plan.tool_calls:
            return plan
    user_text = _last_text(messages, ("user", "tool"))
    full = text.echo_text(user_text)
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        full = text.json_reply(user_text, None)
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", {}).get("schema", {}) if isinstance(fmt.get("json_schema"), Mapping) else {}
        full = text.json_reply(user_text, schema)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    plan.reply = text.limit_reply(
        full, stop=_stop_list(body.get("stop")), max_tokens=limit if isinstance(limit, int) else None
    )
    return plan
