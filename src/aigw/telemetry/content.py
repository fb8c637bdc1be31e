"""OpenAI-style chat messages -> the GenAI conventions' message shape (``role`` + ``parts``), for the opt-in
``gen_ai.input.messages`` / ``gen_ai.output.messages`` attributes. Only text and tool calls are carried: images and
audio would put whole payloads into a trace, so they appear as a part with their type only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, Sequence):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "content": part.get("text", "")})
            else:
                parts.append({"type": str(kind)})
    return parts


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for call in calls or ():
        fn = call.get("function") or {}
        parts.append(
            {"type": "tool_call", "id": call.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")}
        )
    return parts


def input_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat request messages in the conventions' input-messages shape."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = str(msg.get("role", "user"))
        if role == "tool":
            parts = [{"type": "tool_call_response", "id": msg.get("tool_call_id"), "response": msg.get("content")}]
        else:
            parts = _content_parts(msg.get("content")) + _tool_calls(msg.get("tool_calls"))
        out.append({"role": role, "parts": parts})
    return out


def output_messages(choices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat response choices in the conventions' output-messages shape."""
    out: list[dict[str, Any]] = []
    for choice in choices:
        msg = choice.get("message") or {}
        parts = _content_parts(msg.get("content")) + _tool_calls(msg.get("tool_calls"))
        out.append(
            {"role": str(msg.get("role", "assistant")), "parts": parts, "finish_reason": choice.get("finish_reason")}
        )
    return out
