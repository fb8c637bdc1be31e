"""Config models. Unknown keys are rejected everywhere (extra="forbid"); providers are a union on ``type``."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ProviderBase(_Model):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    # Non-streaming: the whole exchange. Streaming: the longest silence between two chunks.
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Response headers (non-streaming) or the first chunk (streaming) must arrive within this; default timeout_s.
    first_byte_timeout_s: Annotated[float, Field(gt=0)] | None = None
    # A whole stream, first chunk to last.
    stream_timeout_s: Annotated[float, Field(gt=0)] = 600.0


class OpenAIProvider(_ProviderBase):
    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    # None = the upstream needs no key (an OpenAI-compatible server). An empty string (an unset
    # ${VAR:-}) disables the provider, so an example config can list it without the key.
    api_key: SecretStr | None = None
    organization: str | None = None

    @property
    def enabled(self) -> bool:
        return self.api_key is None or bool(self.api_key.get_secret_value())


class AnthropicProvider(_ProviderBase):
    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key: SecretStr | None = None
    anthropic_version: str = "2023-06-01"
    default_max_tokens: Annotated[int, Field(ge=1)] = 4096

    @property
    def enabled(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value())


class BedrockProvider(_ProviderBase):
    type: Literal["bedrock"]
    region: str = "us-east-1"
    endpoint_url: str | None = None
    profile: str | None = None
    # Converse does not require maxTokens; None lets each model use its own default.
    default_max_tokens: Annotated[int, Field(ge=1)] | None = None

    @property
    def enabled(self) -> bool:
        return True


class OllamaProvider(_ProviderBase):
    type: Literal["ollama"]
    base_url: str = "http://localhost:11434"
    keep_alive: str | None = None

    @property
    def enabled(self) -> bool:
        return True


ProviderConfig = Annotated[
    OpenAIProvider | AnthropicProvider | BedrockProvider | OllamaProvider, Field(discriminator="type")
]


class Target(_Model):
    provider: str
    model: Annotated[str, Field(min_length=1)]
    # Extra attempts on this target (jittered exponential back-off, honouring retry-after) before falling back.
    retries: Annotated[int, Field(ge=0, le=5)] = 0


class AliasCache(_Model):
    """Per-alias response-cache settings (the global ``cache`` section must be enabled for any caching)."""

    enabled: bool = True
    # One entry for every tenant instead of one per tenant: only for answers that hold nothing tenant-specific.
    shared: bool = False
    ttl_s: Annotated[int, Field(ge=1)] | None = None  # None: the global cache.ttl_s


class ModelAlias(_Model):
    name: Annotated[str, Field(min_length=1)]
    targets: Annotated[list[Target], Field(min_length=1)]
    cache: AliasCache = AliasCache()


class CacheConfig(_Model):
    enabled: bool = False
    ttl_s: Annotated[int, Field(ge=1)] = 300
    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024


class BreakerConfig(_Model):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    # Also open when failures / requests over `window_s` reach `failure_rate`, once `min_requests` were seen.
    failure_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    window_s: Annotated[float, Field(gt=0)] = 60.0
    min_requests: Annotated[int, Field(ge=1)] = 20


class PriceOverride(_Model):
    input: Annotated[Decimal, Field(ge=0)]
    output: Annotated[Decimal, Field(ge=0)]
    cached_input: Annotated[Decimal, Field(ge=0)] | None = None
    cache_write: Annotated[Decimal, Field(ge=0)] | None = None


class _SinkBase(_Model):
    """Delivery settings shared by every usage-event sink (see docs/events.md)."""

    # Keys the sink's rows in the outbox, so it must stay the same across restarts and replicas. None: derived from
    # the destination (``sqs:QUEUE``, ``sns:TOPIC``, ``webhook:HOST``); set it when two sinks would share a name.
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None
    # Undelivered events kept for this sink; past it the oldest are dropped, counted and logged.
    max_backlog: Annotated[int, Field(ge=1)] = 100_000
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0  # one delivery call
    poll_interval_s: Annotated[float, Field(gt=0, le=10)] = 1.0  # how often an idle publisher looks for new events
    min_backoff_s: Annotated[float, Field(gt=0)] = 0.5  # after a failed call; doubles per failure up to max_backoff_s
    max_backoff_s: Annotated[float, Field(gt=0, le=30)] = 20.0  # ≤ 30 so a recovered sink is retried soon enough
    parallel: Annotated[int, Field(ge=1, le=16)] = 4  # batches in flight at once per sink and process


class SqsSink(_SinkBase):
    type: Literal["sqs"]
    queue_url: str
    region: str | None = None
    endpoint_url: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=10)] = 10  # SendMessageBatch takes at most 10


class SnsSink(_SinkBase):
    type: Literal["sns"]
    topic_arn: str
    region: str | None = None
    endpoint_url: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=10)] = 10  # PublishBatch takes at most 10


class WebhookSink(_SinkBase):
    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 100


EventSink = Annotated[SqsSink | SnsSink | WebhookSink, Field(discriminator="type")]


class RateLimitConfig(_Model):
    # With redis_url: when Redis does not answer, decide with this process's own counters (True) or refuse (False).
    fail_open: bool = True
    # The output part of a request's TPM reservation when it sets no max_tokens (settled with the real usage after).
    estimate_output_tokens: Annotated[int, Field(ge=0)] = 512


class UsageConfig(_Model):
    """The usage ledger's batching (records are written off the request path)."""

    flush_interval_s: Annotated[float, Field(gt=0)] = 0.5
    batch_size: Annotated[int, Field(ge=1)] = 500
    max_pending: Annotated[int, Field(ge=1)] = 100_000
    # Raw usage records older than this many days may be pruned (UsageRepo.prune); daily rollups are kept. None: keep.
    retention_days: int | None = None


class Settings(_Model):
    admin_key: SecretStr
    database_url: str = "sqlite+aiosqlite:///./aigw.db"
    redis_url: str | None = None
    # Any one Redis call slower than this counts as Redis trouble: that call falls back to this process's state.
    redis_timeout_s: Annotated[float, Field(gt=0)] = 0.25
    max_body_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    # Deadline for serving a request across its whole chain of targets, retries and back-off included (for a
    # stream: until its first chunk). Retries x timeouts can never exceed it.
    request_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # On SIGTERM: stop accepting, let in-flight requests and streams finish for up to this long, then flush usage.
    shutdown_drain_s: Annotated[float, Field(gt=0)] = 30.0
    # How often keys/tenants changed by other processes are picked up (revocations on this process are immediate).
    key_sync_interval_s: Annotated[float, Field(gt=0)] = 1.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cache: CacheConfig = CacheConfig()
    circuit_breaker: BreakerConfig = BreakerConfig()
    usage: UsageConfig = UsageConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    providers: list[ProviderConfig] = []
    models: list[ModelAlias] = []
    pricing: dict[str, PriceOverride] = {}
    events: list[EventSink] = []

    @field_validator("admin_key")
    @classmethod
    def _admin_key_long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 8:
            raise ValueError("admin_key must be at least 8 characters; set AIGW_ADMIN_KEY to a long random string")
        return v

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                "(e.g. sqlite+aiosqlite:///./aigw.db)"
            )
        return v

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        names = [p.name for p in self.providers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"provider names must be unique; rename the duplicates: {sorted(dupes)}")
        aliases = [m.name for m in self.models]
        dupes = {n for n in aliases if aliases.count(n) > 1}
        if dupes:
            raise ValueError(f"model alias names must be unique; rename the duplicates: {sorted(dupes)}")
        known = set(names)
        for m in self.models:
            for t in m.targets:
                if t.provider not in known:
                    raise ValueError(
                        f"model {m.name!r} targets unknown provider {t.provider!r}; "
                        f"use one of {sorted(known)} or add it under providers:"
                    )
        return self
