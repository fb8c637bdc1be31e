"""GenAI semantic-convention names, bucket boundaries and value mappings shared by metrics and tracing.

Taken from the OpenTelemetry GenAI conventions (development status): the metric names, units and the
ExplicitBucketBoundaries they specify, and the attribute keys used on client spans.
"""

from __future__ import annotations

from typing import Final

# Metric instruments (OTel names) and their Prometheus translations (dots to underscores, unit suffix added the way
# the OTel Prometheus exporters do it, so dashboards work whether metrics arrive by scrape or via a collector).
TOKEN_USAGE: Final = "gen_ai.client.token.usage"
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"

# [1, 4, 16, ... 67108864]: powers of four, as the convention specifies for gen_ai.client.token.usage.
TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))
# [0.01, 0.02, ... 81.92]: doubling from 10 ms, as specified for operation.duration and time_to_first_chunk.
DURATION_BUCKETS: Final = tuple(round(0.01 * 2**i, 2) for i in range(14))
# Gateway overhead is sub-millisecond to a few milliseconds; the GenAI buckets would put it all in the first one.
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Attribute keys.
OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
TOKEN_TYPE: Final = "gen_ai.token.type"
INPUT_MESSAGES: Final = "gen_ai.input.messages"
OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
# Ours: the configured provider entry (e.g. "openai-eu"), which gen_ai.provider.name cannot tell apart.
AIGW_PROVIDER: Final = "aigw.provider"
AIGW_TENANT: Final = "aigw.tenant.id"
AIGW_CACHE: Final = "aigw.cache"
AIGW_COST: Final = "aigw.cost_usd"

# Our provider kinds -> gen_ai.provider.name well-known values ("ollama" has none, so it stays a custom value).
_PROVIDER_NAMES: Final = {"openai": "openai", "anthropic": "anthropic", "bedrock": "aws.bedrock", "ollama": "ollama"}


def provider_name(kind: str) -> str:
    """The ``gen_ai.provider.name`` for one of our provider kinds (``bedrock`` -> ``aws.bedrock``)."""
    return _PROVIDER_NAMES.get(kind, kind)
