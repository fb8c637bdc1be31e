from __future__ import annotations

from pathlib import Path

import pytest

from aigw.config import ConfigError, load_settings, parse_settings
from aigw.config.model import OllamaProvider, OpenAIProvider

BASE = {"admin_key": "admin-key-123456"}
REPO = Path(__file__).resolve().parents[2]


def problems(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_settings(data, env or {})
    return exc.value.problems


def test_expansion_with_defaults_and_types() -> None:
    s = parse_settings(
        {
            **BASE,
            "providers": [
                {"name": "o", "type": "openai", "api_key": "${K}", "timeout_s": "${T:-12.5}"},
                {"name": "l", "type": "ollama", "base_url": "http://${HOST:-localhost}:11434"},
            ],
        },
        env={"K": "sk-live"},
    )
    o, local = s.providers
    assert isinstance(o, OpenAIProvider) and o.api_key is not None
    assert o.api_key.get_secret_value() == "sk-live" and o.timeout_s == 12.5 and o.enabled
    assert isinstance(local, OllamaProvider) and local.base_url == "http://localhost:11434"


def test_empty_key_disables_provider() -> None:
    s = parse_settings({**BASE, "providers": [{"name": "o", "type": "openai", "api_key": "${K:-}"}]}, env={})
    assert not s.providers[0].enabled


def test_unset_variable_is_reported_with_path_and_fix() -> None:
    (p,) = problems({**BASE, "providers": [{"name": "o", "type": "openai", "api_key": "${OPENAI_KEY}"}]})
    assert p.startswith("providers[0].api_key:") and "OPENAI_KEY" in p and "${OPENAI_KEY:-default}" in p


def test_unknown_keys_rejected_everywhere_with_paths() -> None:
    ps = problems(
        {
            **BASE,
            "bogus": 1,
            "cache": {"enabled": True, "ttl": 3},
            "providers": [{"name": "x", "type": "ollama", "nope": 1}],
        }
    )
    assert any(p.startswith("bogus:") and "unknown key" in p for p in ps)
    assert any(p.startswith("cache.ttl:") for p in ps)
    assert any(p.startswith("providers[0].nope:") for p in ps)


def test_unknown_provider_type_and_target() -> None:
    assert any("providers[0]" in p for p in problems({**BASE, "providers": [{"name": "x", "type": "gemini"}]}))
    ps = problems(
        {
            **BASE,
            "providers": [{"name": "x", "type": "ollama"}],
            "models": [{"name": "m", "targets": [{"provider": "y", "model": "z"}]}],
        }
    )
    assert any("unknown provider 'y'" in p for p in ps)


def test_secrets_never_echoed() -> None:
    secret = "sk-super-secret-value"
    # A secret put where a number belongs must not appear in the error.
    ps = problems({**BASE, "providers": [{"name": "o", "type": "openai", "timeout_s": secret, "api_key": 5}]})
    assert ps and all(secret not in p for p in ps)
    with pytest.raises(ConfigError) as exc:
        parse_settings({"admin_key": "short"}, {})
    assert "short" not in str(exc.value).replace("shorter", "")


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("admin_key: x\nproviders: [\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(f, {})
    assert "line" in exc.value.problems[0]


def test_example_config_loads_without_cloud_keys() -> None:
    s = load_settings(REPO / "config.example.yaml", env={})
    enabled = {p.name for p in s.providers if p.enabled}
    assert enabled == {"local"}
    s2 = load_settings(REPO / "config.example.yaml", env={"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "a"})
    assert {p.name for p in s2.providers if p.enabled} == {"local", "oai", "claude"}
