"""Root conftest: real-service fixtures (SQLite, PostgreSQL, Redis) and the fake upstream servers."""

pytest_plugins = ["tests.support.databases", "tests.fakes.plugin"]
