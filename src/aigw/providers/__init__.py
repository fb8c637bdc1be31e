"""Provider registry: config type → adapter and signer, imported lazily so optional extras load only when used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import aiohttp

from aigw.config.model import AnthropicProvider, BedrockProvider, OllamaProvider, OpenAIProvider
from aigw.providers.base import ChatAdapter
from aigw.providers.signers import StaticHeaders
from aigw.providers.transport import Timeouts, Upstream

ProviderCfg = OpenAIProvider | AnthropicProvider | BedrockProvider | OllamaProvider

# type → "module:Class"; a new provider adds one line here (no if/elif switchboard elsewhere).
ADAPTERS: Mapping[str, str] = {
    "openai": "aigw.providers.openai:OpenAIAdapter",
    "ollama": "aigw.providers.ollama:OllamaAdapter",
}

# The OpenTelemetry GenAI `gen_ai.provider.name` for each type (contract, "Observability").
GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "bedrock": "aws.bedrock", "ollama": "ollama"}


class UnsupportedProvider(Exception):
    pass


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    assert isinstance(cls, type)
    return cls


def build_upstream(cfg: ProviderCfg, session: aiohttp.ClientSession) -> Upstream:
    if cfg.type not in ADAPTERS:
        raise UnsupportedProvider(f"provider type {cfg.type!r} ({cfg.name}) is not available in this version")
    cls = _load(ADAPTERS[cfg.type])
    timeouts = Timeouts(connect_s=cfg.connect_timeout_s, total_s=cfg.timeout_s)
    if isinstance(cfg, OpenAIProvider):
        headers = {}
        if cfg.api_key is not None:
            headers["authorization"] = f"Bearer {cfg.api_key.get_secret_value()}"
        if cfg.organization:
            headers["openai-organization"] = cfg.organization
        adapter: ChatAdapter = cls()
        return Upstream(
            name=cfg.name,
            kind=cfg.type,
            base_url=cfg.base_url,
            adapter=adapter,
            signer=StaticHeaders(headers),
            timeouts=timeouts,
            session=session,
        )
    if isinstance(cfg, OllamaProvider):
        adapter = cls(keep_alive=cfg.keep_alive)
        return Upstream(
            name=cfg.name,
            kind=cfg.type,
            base_url=cfg.base_url,
            adapter=adapter,
            signer=None,
            timeouts=timeouts,
            session=session,
        )
    raise UnsupportedProvider(f"provider type {cfg.type!r} ({cfg.name}) is not available in this version")
