"""The price table and the cost of one request, in ``Decimal`` USD (never float).

Prices are USD per 1M tokens. The built-in table is ``aigw/data/prices.json`` (dated by ``as_of``); the config's
``pricing:`` entries (keys are upstream model names) replace a model's built-in entry as a whole.

Cost of one request, from the upstream's reported (normalized) usage::

    uncached = prompt_tokens - cached_prompt_tokens - cache_write_tokens      (clamped at 0)
    cost     = (uncached * input
                + cached_prompt_tokens * (cached_input or input)
                + cache_write_tokens * (cache_write or input)
                + completion_tokens * output) / 1_000_000

quantized to 1e-9 USD with ROUND_HALF_EVEN. ``prompt_tokens`` is the whole prompt: OpenAI's includes its
``cached_tokens`` (and it has no cache writes); the Anthropic/Bedrock adapters already add cache reads and writes to it,
so the one formula serves every provider. Ollama costs 0. A model the table does not know costs ``None`` (unknown),
never a made-up 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from importlib import resources
from types import MappingProxyType
from typing import Any, Protocol

from aigw.schema.usage import Usage

__all__ = [
    "FREE_PROVIDER_TYPES",
    "Price",
    "PriceLike",
    "PriceTable",
    "candidate_names",
    "compute_cost",
    "load_packaged_prices",
    "parse_prices",
]

# Provider types whose usage is free (self-hosted).
FREE_PROVIDER_TYPES = frozenset({"ollama"})

_PER_TOKENS = 6  # prices are per 10**6 tokens
_QUANTUM = Decimal("1e-9")
# Enough digits that no realistic token count or price is ever rounded before the final quantize.
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)

# Rule 2: Bedrock cross-region inference profiles prefix the model id with a geography
# (``us.anthropic.claude-…``, ``global.anthropic.claude-…``); the price table is keyed by the bare model id.
_BEDROCK_GEO_PREFIXES = ("us-gov.", "global.", "apac.", "us.", "eu.", "jp.", "au.", "ca.")
# Rule 3: an OpenAI dated snapshot (``gpt-4o-2024-08-06``) ends in ``-YYYY-MM-DD``.
_DATED_SNAPSHOT = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")


class PriceLike(Protocol):
    """Anything with the four price fields (``config.model.PriceOverride``, ``Price``)."""

    @property
    def input(self) -> Decimal: ...
    @property
    def output(self) -> Decimal: ...
    @property
    def cached_input(self) -> Decimal | None: ...
    @property
    def cache_write(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens. ``None`` cache prices mean "billed at ``input``"."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write"):
            value = getattr(self, name)
            if value is None and name in ("cached_input", "cache_write"):
                continue
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"price {name} must be a finite, non-negative Decimal, got {value!r}")

    @classmethod
    def of(cls, p: PriceLike) -> Price:
        return p if isinstance(p, Price) else cls(p.input, p.output, p.cached_input, p.cache_write)


def _decimal(raw: object, where: str, *, optional: bool) -> Decimal | None:
    if raw is None and optional:
        return None
    # Strings only: a JSON number would have gone through float in most tooling; keep the table exact.
    if not isinstance(raw, str):
        raise ValueError(f"{where}: price must be a decimal string, got {raw!r}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{where}: not a decimal: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{where}: price must be finite and non-negative: {raw!r}")
    return value


def parse_prices(text: str) -> tuple[date, str, dict[str, Price]]:
    """Parse a price-table document: ``{"as_of", "source", "models": {name: {input, output, ...}}}``."""
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ValueError("price table: expected an object with a 'models' object")
    as_of = date.fromisoformat(doc["as_of"])
    source = doc.get("source", "")
    if not isinstance(source, str):
        raise ValueError("price table: 'source' must be a string")
    models: dict[str, Price] = {}
    for name, entry in doc["models"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"price table: {name}: expected an object")
        unknown = set(entry) - {"input", "output", "cached_input", "cache_write"}
        if unknown:
            raise ValueError(f"price table: {name}: unknown fields {sorted(unknown)}")
        inp = _decimal(entry.get("input"), f"{name}.input", optional=False)
        out = _decimal(entry.get("output"), f"{name}.output", optional=False)
        assert inp is not None and out is not None
        models[name] = Price(
            input=inp,
            output=out,
            cached_input=_decimal(entry.get("cached_input"), f"{name}.cached_input", optional=True),
            cache_write=_decimal(entry.get("cache_write"), f"{name}.cache_write", optional=True),
        )
    return as_of, source, models


def load_packaged_prices() -> tuple[date, str, dict[str, Price]]:
    """The built-in table shipped as ``aigw/data/prices.json``."""
    text = resources.files("aigw").joinpath("data/prices.json").read_text(encoding="utf-8")
    return parse_prices(text)


def candidate_names(model: str) -> list[str]:
    """The names ``price_for`` tries, in order (each rule documented at its pattern above):

    1. the exact name;
    2. a Bedrock cross-region inference id without its geography prefix (``us.anthropic.x`` → ``anthropic.x``);
    3. for each name so far that is a dated snapshot, its base name (``gpt-4o-2024-08-06`` → ``gpt-4o``) —
       tried only after every exact form, so a dated entry with its own price (``gpt-4o-2024-05-13``) wins.
    """
    names = [model]
    for prefix in _BEDROCK_GEO_PREFIXES:
        if model.startswith(prefix) and len(model) > len(prefix):
            names.append(model[len(prefix) :])
            break
    for name in list(names):
        m = _DATED_SNAPSHOT.match(name)
        if m:
            names.append(m.group("base"))
    return names


class PriceTable:
    """The built-in table (read once, here) with config overrides applied on top."""

    def __init__(
        self,
        overrides: Mapping[str, PriceLike] | None = None,
        *,
        base: tuple[date, str, Mapping[str, Price]] | None = None,
    ) -> None:
        as_of, source, models = base if base is not None else load_packaged_prices()
        merged = dict(models)
        for name, override in (overrides or {}).items():
            merged[name] = Price.of(override)  # replaces the whole entry, no field-wise merge
        self._as_of = as_of
        self._source = source
        self._models: Mapping[str, Price] = MappingProxyType(merged)

    @property
    def as_of(self) -> date:
        """The built-in table's date (overrides are not dated)."""
        return self._as_of

    @property
    def source(self) -> str:
        return self._source

    @property
    def models(self) -> Mapping[str, Price]:
        """Every entry, keyed by exact upstream model name (read-only)."""
        return self._models

    def price_for(self, model: str) -> Price | None:
        for name in candidate_names(model):
            price = self._models.get(name)
            if price is not None:
                return price
        return None

    def cost(self, provider_type: str, model: str, usage: Usage) -> Decimal | None:
        """USD cost of one request; ``Decimal(0)`` for free providers, ``None`` when the model is not priced."""
        if provider_type in FREE_PROVIDER_TYPES:
            return Decimal(0)
        price = self.price_for(model)
        if price is None:
            return None
        return compute_cost(price, usage)


def compute_cost(price: Price, usage: Usage) -> Decimal:
    cached = max(usage.cached_prompt_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    # Clamped: a provider reporting more cache tokens than prompt tokens must not produce a negative charge.
    uncached = max(usage.prompt_tokens - cached - written, 0)
    completion = max(usage.completion_tokens, 0)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write if price.cache_write is not None else price.input
    with localcontext(_CTX):
        micro = (
            Decimal(uncached) * price.input
            + Decimal(cached) * cached_rate
            + Decimal(written) * write_rate
            + Decimal(completion) * price.output
        )
        return micro.scaleb(-_PER_TOKENS).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
