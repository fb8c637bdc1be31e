"""Provider registry: config type → a factory building (adapter, signer, base URL). Each factory imports its
provider lazily, so an optional extra (botocore for Bedrock) is loaded only when such a provider is configured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aigw.config.model import AnthropicProvider, BedrockProvider, OllamaProvider, OpenAIProvider
from aigw.providers.base import ChatAdapter, Signer
from aigw.providers.signers import StaticHeaders
from aigw.providers.transport import HttpClients, Timeouts, Upstream

ProviderCfg = OpenAIProvider | AnthropicProvider | BedrockProvider | OllamaProvider

# The OpenTelemetry GenAI `gen_ai.provider.name` for each type (contract, "Observability").
GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "bedrock": "aws.bedrock", "ollama": "ollama"}


class ProviderSetupError(Exception):
    """A configured provider cannot be built (e.g. Bedrock without AWS credentials); the message is for operators."""


@dataclass(frozen=True, slots=True)
class Wiring:
    adapter: ChatAdapter
    signer: Signer | None
    base_url: str


def _openai(cfg: ProviderCfg) -> Wiring:
    from aigw.providers.openai import OpenAIAdapter

    assert isinstance(cfg, OpenAIProvider)
    headers = {}
    if cfg.api_key is not None:
        headers["authorization"] = f"Bearer {cfg.api_key.get_secret_value()}"
    if cfg.organization:
        headers["openai-organization"] = cfg.organization
    return Wiring(OpenAIAdapter(), StaticHeaders(headers), cfg.base_url)


def _ollama(cfg: ProviderCfg) -> Wiring:
    from aigw.providers.ollama import OllamaAdapter

    assert isinstance(cfg, OllamaProvider)
    return Wiring(OllamaAdapter(keep_alive=cfg.keep_alive), None, cfg.base_url)


def _anthropic(cfg: ProviderCfg) -> Wiring:
    from aigw.providers.anthropic import AnthropicAdapter

    assert isinstance(cfg, AnthropicProvider)
    headers = {"x-api-key": cfg.api_key.get_secret_value()} if cfg.api_key is not None else {}
    adapter = AnthropicAdapter(anthropic_version=cfg.anthropic_version, default_max_tokens=cfg.default_max_tokens)
    # The adapter's paths start with /v1: accept a base URL written either way.
    return Wiring(adapter, StaticHeaders(headers), cfg.base_url.rstrip("/").removesuffix("/v1"))


def _bedrock(cfg: ProviderCfg) -> Wiring:
    from aigw.providers.bedrock import BedrockAdapter
    from aigw.providers.bedrock.adapter import default_endpoint
    from aigw.providers.sigv4 import MissingCredentials, SigV4Signer

    assert isinstance(cfg, BedrockProvider)
    try:
        signer = SigV4Signer(cfg.region, profile=cfg.profile)
    except MissingCredentials as exc:
        raise ProviderSetupError(f"provider {cfg.name}: {exc}") from None
    base_url = cfg.endpoint_url or default_endpoint(cfg.region)
    return Wiring(BedrockAdapter(default_max_tokens=cfg.default_max_tokens), signer, base_url)


FACTORIES: Mapping[str, Callable[[ProviderCfg], Wiring]] = {
    "openai": _openai,
    "ollama": _ollama,
    "anthropic": _anthropic,
    "bedrock": _bedrock,
}


def build_upstream(cfg: ProviderCfg, http: HttpClients) -> Upstream:
    w = FACTORIES[cfg.type](cfg)
    return Upstream(
        name=cfg.name,
        kind=cfg.type,
        base_url=w.base_url,
        adapter=w.adapter,
        signer=w.signer,
        timeouts=Timeouts(
            connect_s=cfg.connect_timeout_s,
            total_s=cfg.timeout_s,
            first_byte_s=cfg.first_byte_timeout_s or cfg.timeout_s,
            stream_s=cfg.stream_timeout_s,
        ),
        session=http.session,
        pool=http.pool,
    )
