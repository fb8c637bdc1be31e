"""Deterministic "model" behaviour shared by the fakes: replies, token counts, tool-call arguments, embeddings.

The rules (so tests can compute expectations without running a fake):

* Reply text: ``"Echo: " + " ".join(words of the last user/tool message's text)`` — whitespace collapsed so the
  streamed pieces join back to exactly the same string. JSON mode gives ``{"echo": "<text>"}``; a JSON schema gives
  an instance built by :func:`sample_from_schema`.
* Tokens: whitespace-separated words (``len(text.split())``). Prompt tokens = the words of every message's text
  (string content, ``text`` parts, tool-call names and arguments). Completion tokens = words of the reply, or for
  tool calls the number of argument fragments plus one per call.
* Streaming pieces: one piece per word, the separating whitespace leading (``"Echo:", " hello", " world"``).
* Stop sequences cut the reply before the earliest match (finish "stop"); a max-token limit then keeps the first N
  pieces (finish "length").
* Embeddings: a unit-length vector seeded by SHA-256 of the text, every component exactly representable as float32
  (so the JSON floats and OpenAI's base64 little-endian float32 encoding decode to identical vectors).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Json = Any

_PIECE = re.compile(r"\s*\S+")
_ARG_FRAGMENT = re.compile(r"\w+|[^\w]+")


def count_tokens(text: str) -> int:
    return len(text.split())


def message_text(message: Mapping[str, Json]) -> str:
    """The text of a chat message in either wire format (OpenAI content parts or plain strings)."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            args = fn.get("arguments")
            parts.append(str(fn.get("name", "")))
            parts.append(args if isinstance(args, str) else json.dumps(args))
    return " ".join(p for p in parts if p)


def prompt_tokens(messages: Iterable[Mapping[str, Json]]) -> int:
    return sum(count_tokens(message_text(m)) for m in messages)


def split_pieces(text: str) -> list[str]:
    """Split into word pieces with leading whitespace; ``"".join(split_pieces(t)) == t``."""
    pieces = _PIECE.findall(text)
    tail = text[len("".join(pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces.append(tail)
    return pieces


def split_arguments(arguments: str) -> list[str]:
    """Split a tool call's JSON arguments into fragments the way a model streams them (word/punctuation runs)."""
    return _ARG_FRAGMENT.findall(arguments) or [arguments]


@dataclass(frozen=True)
class TextReply:
    content: str
    finish: Literal["stop", "length"]

    @property
    def pieces(self) -> list[str]:
        return split_pieces(self.content)

    @property
    def tokens(self) -> int:
        return count_tokens(self.content)


def limit_reply(full: str, *, stop: Sequence[str] = (), max_tokens: int | None = None) -> TextReply:
    content = full
    cuts = [i for i in (full.find(s) for s in stop if s) if i >= 0]
    if cuts:
        content = full[: min(cuts)]
    if max_tokens is not None and count_tokens(content) > max_tokens:
        return TextReply("".join(split_pieces(content)[: max(max_tokens, 0)]), "length")
    return TextReply(content, "stop")


def echo_text(text: str) -> str:
    return " ".join(["Echo:", *text.split()])


def json_reply(text: str, schema: Mapping[str, Json] | None) -> str:
    value = sample_from_schema(schema, text) if schema is not None else {"echo": " ".join(text.split())}
    return json.dumps(value, separators=(", ", ": "))


def sample_from_schema(schema: Json, text: str) -> Json:
    """A deterministic instance of a (simple) JSON schema: strings are the user's text, integers its word count."""
    if not isinstance(schema, Mapping):
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_from_schema(schema[key][0], text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    words = text.split()
    if kind == "string":
        return " ".join(words)
    if kind == "integer":
        return len(words)
    if kind == "number":
        return len(words) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [sample_from_schema(schema.get("items", {"type": "string"}), text)]
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return {}
    required = schema.get("required")
    names = [n for n in props if n in required] if isinstance(required, list) and required else list(props)
    return {name: sample_from_schema(props[name], text) for name in names}


@dataclass(frozen=True)
class PlannedToolCall:
    name: str
    arguments: dict[str, Json]

    @property
    def arguments_json(self) -> str:
        """OpenAI sends arguments as a compact JSON string."""
        return json.dumps(self.arguments, separators=(",", ":"))


def plan_tool_calls(
    tools: Sequence[Mapping[str, Json]], user_text: str, *, named: str | None = None, parallel_allowed: bool = True
) -> list[PlannedToolCall]:
    """Which tools the fake model calls: the named one, else the first — the first two when the user text contains
    the word "parallel" (and parallel calls are allowed)."""
    functions = [t["function"] for t in tools if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)]
    if not functions:
        return []
    if named is not None:
        chosen = [f for f in functions if f.get("name") == named][:1] or [{"name": named}]
    elif parallel_allowed and re.search(r"\bparallel\b", user_text, re.IGNORECASE) and len(functions) > 1:
        chosen = functions[:2]
    else:
        chosen = functions[:1]
    calls = []
    for fn in chosen:
        args = sample_from_schema(fn.get("parameters") or {"type": "object"}, user_text)
        calls.append(PlannedToolCall(str(fn.get("name", "")), args if isinstance(args, dict) else {}))
    return calls


def tool_call_tokens(calls: Iterable[PlannedToolCall]) -> int:
    return sum(1 + len(split_arguments(c.arguments_json)) for c in calls)


def embedding_vector(text: str, dim: int) -> list[float]:
    """Unit vector of ``dim`` float32-exact components, a pure function of ``text``."""
    seed = hashlib.sha256(text.encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dim:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend((int.from_bytes(block[i : i + 4], "little") / 0xFFFFFFFF) * 2.0 - 1.0 for i in range(0, 32, 4))
        counter += 1
    raw = raw[:dim]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [to_float32(x / norm) for x in raw]


def to_float32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def float32_le_bytes(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)
