from __future__ import annotations

import pytest

from aigw.errors import ModelNotFound
from aigw.routing import Router, Target


def router() -> Router:
    return Router(
        {"smart": [Target("oai", "gpt-4o"), Target("local", "llama3")], "cloud": [Target("oai", "gpt-4o")]},
        providers=["local"],  # oai disabled (no key)
    )


def test_alias_keeps_enabled_targets_in_order() -> None:
    assert router().resolve("smart") == (Target("local", "llama3"),)


def test_provider_slash_model_splits_at_first_slash() -> None:
    assert router().resolve("local/org/model:7b") == (Target("local", "org/model:7b"),)


@pytest.mark.parametrize("model", ["nope", "oai/gpt-4o", "unknown/x", "local/", "cloud"])
def test_unknown_or_disabled_is_model_not_found(model: str) -> None:
    with pytest.raises(ModelNotFound) as exc:
        router().resolve(model)
    assert exc.value.http_status == 404 and exc.value.error_code == "model_not_found"
