"""The skip-or-fail policy for real services, and the Redis fixture (the store's fixtures live beside it)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.support.databases import REQUIRE_ENV, require_service


async def _refused() -> None:
    raise ConnectionRefusedError("nothing listens there")


async def _fine() -> None:
    return None


def test_unreachable_service_skips_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        require_service("Thing", "thing://user:s3cret@host:1/0", "AIGW_TEST_THING_URL", _refused)
    message = str(info.value)
    assert "SKIPPED" in message and "AIGW_TEST_THING_URL" in message and "ConnectionRefusedError" in message
    assert "s3cret" not in message and "thing://user:***@host:1/0" in message


def test_unreachable_service_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="Thing not reachable"):
        require_service("Thing", "thing://host:1", "AIGW_TEST_THING_URL", _refused)


def test_reachable_service_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    require_service("Thing", "thing://host:1", "AIGW_TEST_THING_URL", _fine)


@pytest.mark.redis
async def test_redis_url_is_an_empty_dedicated_database(redis_url: str) -> None:
    assert redis_url.endswith("/15")
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping()
        assert await client.dbsize() == 0
        await client.set("aigw:test", "1")  # flushed by the fixture afterwards
    finally:
        await client.aclose()
