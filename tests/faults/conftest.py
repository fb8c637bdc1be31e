"""Fault tests: real services broken on purpose (PostgreSQL stopped, Redis unreachable) under real gateways.

A test marked ``stops_postgres`` stops the shared PostgreSQL server for a few seconds: it is moved to the end of the
session so that no other test sees the outage (it also restarts the server, whatever happens).
"""

from __future__ import annotations

import pytest

STOPS_POSTGRES = "stops_postgres"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{STOPS_POSTGRES}: stops the shared PostgreSQL server; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker(STOPS_POSTGRES) is not None)  # stable: order kept otherwise
