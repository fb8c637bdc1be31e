"""Pytest fixtures for the fakes. Use them from any conftest: ``pytest_plugins = ["tests.fakes.plugin"]`` in the
root conftest, or ``from tests.fakes.plugin import fake_openai  # noqa: F401`` in a nested one.

Each fixture starts a fresh fake on a free port and stops it (cleanly) after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.ollama_fake import FakeOllama
from tests.fakes.openai_fake import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake
