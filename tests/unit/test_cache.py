"""Response cache rules: which requests are cacheable, Cache-Control handling, and what the key covers."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from aigw.cache import CacheDirective, cache_key, cacheable, parse_cache_control
from aigw.schema.chat import ChatCompletionRequest

TARGETS = ["openai/gpt-4o-mini", "anthropic/claude-haiku"]
BASE: dict[str, Any] = {
    "model": "fast",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0,
}


def req(**fields: Any) -> ChatCompletionRequest:
    raw = {**BASE, **fields}
    return msgspec.convert({k: v for k, v in raw.items() if v is not None}, ChatCompletionRequest)


def key(raw: dict[str, Any], scope: str = "tenant-a", targets: list[str] = TARGETS) -> str:
    return cache_key(scope, targets, raw)


@pytest.mark.parametrize(
    ("fields", "header", "expected"),
    [
        ({}, None, CacheDirective("read_write")),
        ({"temperature": 0.0}, "", CacheDirective("read_write")),
        ({"n": 1}, None, CacheDirective("read_write")),
        ({"n": 2}, None, CacheDirective("bypass")),
        ({"temperature": None}, None, CacheDirective("bypass")),  # absent means the default, 1
        ({"temperature": 0.2}, None, CacheDirective("bypass")),
        ({}, "no-cache", CacheDirective("refresh")),
        ({}, "No-Cache", CacheDirective("refresh")),
        ({}, "no-store", CacheDirective("bypass")),
        ({}, "no-cache, no-store", CacheDirective("bypass")),  # no-store wins
        ({"temperature": 1}, "no-cache", CacheDirective("bypass")),  # never cacheable stays uncached
        ({}, "max-age=60", CacheDirective("read_write", 60)),
        ({}, "no-cache, max-age=30", CacheDirective("refresh", 30)),
        ({}, "max-age=0", CacheDirective("refresh")),
        ({"temperature": 0.7}, "max-age=60", CacheDirective("bypass")),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, None, CacheDirective("read_write")),
    ],
)
def test_cacheability_rules(fields: dict[str, Any], header: str | None, expected: CacheDirective) -> None:
    assert cacheable(req(**fields), header) == expected


@pytest.mark.parametrize(
    ("header", "max_age"),
    [
        ("max-age=300", 300),
        ("  MAX-AGE = 300 ", 300),
        ('max-age="15"', 15),
        ("public, max-age=5, no-transform", 5),
        ("max-age=-1", None),
        ("max-age=1.5", None),
        ("max-age=", None),
        ("max-age=abc", None),
        ("no-cache", None),
        (None, None),
    ],
)
def test_max_age_parsing(header: str | None, max_age: int | None) -> None:
    assert parse_cache_control(header).max_age == max_age


def test_key_is_sha256_hex() -> None:
    k = key(BASE)
    assert len(k) == 64
    int(k, 16)


def test_key_ignores_field_order_and_whitespace() -> None:
    reordered = dict(reversed(list(BASE.items())))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in BASE["messages"]]
    pretty = orjson.loads(orjson.dumps(BASE, option=orjson.OPT_INDENT_2))
    spaced = orjson.loads(b'{ "temperature" : 0 ,\n "messages": [{"content":"Be brief.","role":"system"},'
                          b'{"role":"user",  "content":"Hi"}],"model":"fast"}')  # fmt: skip
    assert key(reordered) == key(pretty) == key(spaced) == key(BASE)


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream": False},
        {"user": "end-user-42"},
        {"metadata": {"run": "x"}},
        {"store": True},
        {"service_tier": "flex"},
        {"seed": None},  # a top-level null is the same as absent
    ],
)
def test_key_ignores_fields_that_do_not_change_the_answer(extra: dict[str, Any]) -> None:
    assert key({**BASE, **extra}) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "Hello"}]},
        {"messages": [*BASE["messages"], {"role": "assistant", "content": "Hey"}]},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
        {"tool_choice": "required"},
        {"temperature": 0.5},
        {"max_tokens": 16},
        {"max_completion_tokens": 16},
        {"seed": 7},
        {"stop": ["\n"]},
        {"response_format": {"type": "json_object"}},
        {"model": "other-alias"},
        {"top_p": 0.5},
        {"logprobs": True},
        {"some_vendor_field": 1},  # unknown fields reach OpenAI-type upstreams, so they count
    ],
)
def test_key_covers_what_changes_the_answer(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


def test_key_covers_image_content() -> None:
    def image(url: str) -> dict[str, Any]:
        parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        return {**BASE, "messages": [{"role": "user", "content": parts}]}

    assert key(image("https://x/a.png")) != key(image("https://x/b.png"))


def test_key_covers_targets_and_their_order() -> None:
    assert key(BASE, targets=["openai/gpt-4o"]) != key(BASE, targets=["openai/gpt-4o-mini"])
    assert key(BASE, targets=list(reversed(TARGETS))) != key(BASE)


def test_key_covers_scope() -> None:
    assert key(BASE, scope="tenant-b") != key(BASE, scope="tenant-a")
    assert key(BASE, scope="shared:fast") != key(BASE, scope="tenant-a")


def test_key_does_not_mutate_the_raw_request() -> None:
    raw = {**BASE, "stream": True}
    key(raw)
    assert raw["stream"] is True


def test_integral_floats_and_ints_are_one_key_but_fractions_differ() -> None:
    assert key({**BASE, "temperature": 0.0}) == key({**BASE, "temperature": 0})
    assert key({**BASE, "max_tokens": 64.0}) == key({**BASE, "max_tokens": 64})
    assert key({**BASE, "top_p": 0.5}) != key({**BASE, "top_p": 1})
