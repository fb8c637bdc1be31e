"""Price table and cost calculation (issue 5, Cost): hand-computed Decimals, normalisation rules, the packaged JSON."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from importlib import resources

import pytest

from aigw.config.model import PriceOverride
from aigw.pricing import Price, PriceTable, candidate_names, load_packaged_prices, parse_prices
from aigw.schema.usage import Usage

D = Decimal


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


# (provider type, upstream model, usage, expected USD) — worked out by hand from prices.json:
COST_CASES = [
    # OpenAI: prompt_tokens includes cached_tokens; 600*2.50 + 400*1.25 + 500*10 = 7000 µ$
    ("openai", "gpt-4o", Usage(prompt_tokens=1000, completion_tokens=500, cached_prompt_tokens=400), "0.007000000"),
    # 11321*0.15 + 1024*0.075 + 678*0.60 = 1698.15 + 76.8 + 406.8 = 2181.75
    (
        "openai",
        "gpt-4o-mini",
        Usage(prompt_tokens=12345, completion_tokens=678, cached_prompt_tokens=1024),
        "0.002181750",
    ),
    # no cache: 1000*2.00 + 100*8.00 = 2800
    ("openai", "gpt-4.1", Usage(prompt_tokens=1000, completion_tokens=100), "0.002800000"),
    # embeddings: 7 * 0.02 = 0.14
    ("openai", "text-embedding-3-small", Usage(prompt_tokens=7), "0.000000140"),
    # Anthropic: prompt_tokens = uncached 2000 + reads 6000 + writes 2000;
    # 2000*3 + 6000*0.30 + 2000*3.75 + 300*15 = 6000 + 1800 + 7500 + 4500 = 19800
    (
        "anthropic",
        "claude-sonnet-4-20250514",
        Usage(prompt_tokens=10000, completion_tokens=300, cached_prompt_tokens=6000, cache_write_tokens=2000),
        "0.019800000",
    ),
    # only a cache write: 2048*1.00 + 1*4.00 = 2052
    (
        "anthropic",
        "claude-3-5-haiku-20241022",
        Usage(prompt_tokens=2048, completion_tokens=1, cache_write_tokens=2048),
        "0.002052000",
    ),
    # Opus 4.5: 100*5 + 1000*0.50 + 0*6.25 + 10*25 = 500 + 500 + 250 = 1250
    (
        "anthropic",
        "claude-opus-4-5",
        Usage(prompt_tokens=1100, completion_tokens=10, cached_prompt_tokens=1000),
        "0.001250000",
    ),
    # Bedrock via a cross-region profile: 1000*3 + 3000*0.30 + 1000*3.75 + 250*15 = 3000 + 900 + 3750 + 3750 = 11400
    (
        "bedrock",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        Usage(prompt_tokens=5000, completion_tokens=250, cached_prompt_tokens=3000, cache_write_tokens=1000),
        "0.011400000",
    ),
    # no cache prices in the table: reads and writes billed at input: 1000*3.00 = 3000
    (
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        Usage(prompt_tokens=1000, cached_prompt_tokens=100, cache_write_tokens=100),
        "0.003000000",
    ),
    # 1000*0.06 + 1000*0.24 = 300
    ("bedrock", "amazon.nova-lite-v1:0", Usage(prompt_tokens=1000, completion_tokens=1000), "0.000300000"),
    # one cached Nova Micro token: 0.00875 µ$ = 8.75e-9 → 9e-9
    ("bedrock", "amazon.nova-micro-v1:0", Usage(prompt_tokens=1, cached_prompt_tokens=1), "0.000000009"),
    # 5 * 0.02 = 0.1
    ("bedrock", "amazon.titan-embed-text-v2:0", Usage(prompt_tokens=5), "0.000000100"),
    ("bedrock", "cohere.embed-english-v3", Usage(prompt_tokens=1_000_000), "0.100000000"),
    ("bedrock", "meta.llama3-1-70b-instruct-v1:0", Usage(prompt_tokens=500, completion_tokens=500), "0.000720000"),
]


@pytest.mark.parametrize(("provider", "model", "usage", "expected"), COST_CASES)
def test_cost_per_provider(table: PriceTable, provider: str, model: str, usage: Usage, expected: str) -> None:
    cost = table.cost(provider, model, usage)
    assert type(cost) is Decimal
    assert cost == D(expected)
    assert cost.as_tuple().exponent == -9  # quantized to 1e-9 USD


def test_ollama_is_free_whatever_the_model(table: PriceTable) -> None:
    for model in ("llama3.2", "gpt-4o", "no-such-model"):
        cost = table.cost("ollama", model, Usage(prompt_tokens=10**9, completion_tokens=10**9))
        assert type(cost) is Decimal
        assert cost == 0


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-9-ultra"), ("anthropic", "claude-unknown"), ("bedrock", "us.vendor.nothing-v1:0"), ("openai", "")],
)
def test_unknown_model_is_none_never_zero(table: PriceTable, provider: str, model: str) -> None:
    assert table.price_for(model) is None
    assert table.cost(provider, model, Usage(prompt_tokens=10, completion_tokens=10)) is None


def test_zero_usage_costs_zero_not_none(table: PriceTable) -> None:
    assert table.cost("openai", "gpt-4o", Usage()) == D(0)


def test_more_cache_tokens_than_prompt_never_negative(table: PriceTable) -> None:
    # a malformed report: uncached clamps at 0; reads are still charged: 10*1.25 = 12.5 µ$
    cost = table.cost("openai", "gpt-4o", Usage(prompt_tokens=5, cached_prompt_tokens=10))
    assert cost == D("0.000012500")


def test_big_token_counts_are_exact(table: PriceTable) -> None:
    usage = Usage(prompt_tokens=10**15, completion_tokens=10**15)
    assert table.cost("openai", "gpt-4o", usage) == D("12500000000.000000000")
    # 123456789012344*0.10 + 1*0.025 + 987654321*0.40 µ$, exact to the last digit
    usage = Usage(prompt_tokens=123456789012345, cached_prompt_tokens=1, completion_tokens=987654321)
    cost = table.cost("openai", "gpt-4.1-nano", usage)
    assert cost == D("12346073.962962825")
    assert str(cost) == "12346073.962962825"


def test_rounding_is_half_even() -> None:
    base = (date(2025, 1, 1), "test", {"m": Price(input=D("0.0025"), output=D("0.0015"))})
    t = PriceTable(base=base)
    assert t.cost("openai", "m", Usage(prompt_tokens=1)) == D("0.000000002")  # 2.5e-9 → 2e-9
    assert t.cost("openai", "m", Usage(prompt_tokens=3)) == D("0.000000008")  # 7.5e-9 → 8e-9
    assert t.cost("openai", "m", Usage(completion_tokens=1)) == D("0.000000002")  # 1.5e-9 → 2e-9


# --- overrides ---------------------------------------------------------------------------------------------------


def test_override_replaces_the_whole_entry() -> None:
    t = PriceTable({"gpt-4o": PriceOverride(input=D("1"), output=D("2"))})
    assert t.price_for("gpt-4o") == Price(D("1"), D("2"), None, None)
    # the built-in cached_input (1.25) is gone with the entry: reads now billed at the override's input
    usage = Usage(prompt_tokens=1000, completion_tokens=1000, cached_prompt_tokens=500)
    assert t.cost("openai", "gpt-4o", usage) == D("0.003000000")  # 500*1 + 500*1 + 1000*2
    # other models keep the built-in price
    assert t.price_for("gpt-4o-mini") == PriceTable().price_for("gpt-4o-mini")


def test_override_adds_a_model_with_cache_prices() -> None:
    override = PriceOverride(input=D("0.5"), output=D("1.5"), cached_input=D("0.05"), cache_write=D("0.625"))
    t = PriceTable({"my-finetune": override})
    usage = Usage(prompt_tokens=4000, completion_tokens=1000, cached_prompt_tokens=1000, cache_write_tokens=1000)
    # 2000*0.5 + 1000*0.05 + 1000*0.625 + 1000*1.5 = 1000 + 50 + 625 + 1500 = 3175
    assert t.cost("openai", "my-finetune", usage) == D("0.003175000")


def test_override_of_a_base_name_applies_to_its_snapshots_but_not_to_a_priced_snapshot() -> None:
    t = PriceTable({"gpt-4o": PriceOverride(input=D("1"), output=D("1"))})
    assert t.price_for("gpt-4o-2024-08-06") == Price(D("1"), D("1"))
    assert t.price_for("gpt-4o-2024-05-13") == Price(D("5.00"), D("15.00"))


def test_table_is_read_once_and_is_read_only(table: PriceTable) -> None:
    with pytest.raises(TypeError):
        table.models["x"] = Price(D(1), D(1))  # type: ignore[index]


# --- model-name normalisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "expected_key"),
    [
        # rule 1: exact
        ("gpt-4o", "gpt-4o"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
        ("anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0"),
        # rule 3 does not override rule 1: this dated snapshot has its own (higher) price
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        # rule 2: Bedrock cross-region inference prefixes
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0"),
        ("eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic.claude-3-7-sonnet-20250219-v1:0"),
        ("apac.amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0"),
        ("global.anthropic.claude-opus-4-1-20250805-v1:0", "anthropic.claude-opus-4-1-20250805-v1:0"),
        ("us-gov.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
        # rule 3: OpenAI dated snapshot → base name when the dated one is absent
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-2025-04-16", "o3"),
    ],
)
def test_normalisation(table: PriceTable, asked: str, expected_key: str) -> None:
    assert expected_key in table.models
    assert table.price_for(asked) == table.models[expected_key]


@pytest.mark.parametrize(
    "asked",
    [
        "GPT-4O",  # case-sensitive: names are the upstream's, exactly
        "us.",  # a bare prefix is not a model
        "xx.anthropic.claude-sonnet-4-20250514-v1:0",  # not a known geography
        "gpt-4o-20240806",  # Anthropic-style date is not the OpenAI snapshot form
        "gpt-4o-2024-08",  # incomplete date
        "gpt-4o-latest",
        "claude-sonnet-4",  # no prefix matching
    ],
)
def test_normalisation_does_not_guess(table: PriceTable, asked: str) -> None:
    assert table.price_for(asked) is None


def test_candidate_names_order() -> None:
    assert candidate_names("gpt-4o") == ["gpt-4o"]
    assert candidate_names("gpt-4o-2024-08-06") == ["gpt-4o-2024-08-06", "gpt-4o"]
    assert candidate_names("us.amazon.nova-lite-v1:0") == ["us.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"]
    # exact forms first, then their undated bases
    assert candidate_names("us.x-2025-01-01") == ["us.x-2025-01-01", "x-2025-01-01", "us.x", "x"]


def test_prefixed_exact_entry_wins_over_stripping() -> None:
    base = (date(2025, 1, 1), "t", {"a.m": Price(D(1), D(1)), "us.a.m": Price(D(2), D(2))})
    t = PriceTable(base=base)
    assert t.price_for("us.a.m") == Price(D(2), D(2))
    assert t.price_for("eu.a.m") == Price(D(1), D(1))


# --- the packaged JSON -------------------------------------------------------------------------------------------


def test_packaged_json_is_valid() -> None:
    raw = json.loads(resources.files("aigw").joinpath("data/prices.json").read_text(encoding="utf-8"))
    date.fromisoformat(raw["as_of"])
    assert raw["source"]
    assert raw["models"]
    for name, entry in raw["models"].items():
        assert set(entry) == {"input", "output", "cached_input", "cache_write"}, name
        for field, value in entry.items():
            if value is None:
                assert field in ("cached_input", "cache_write"), name
                continue
            assert isinstance(value, str), (name, field)  # decimal strings, never JSON numbers
            parsed = Decimal(value)
            assert parsed.is_finite(), (name, field)
            assert parsed >= 0, (name, field)


def test_packaged_table_loads_as_decimals(table: PriceTable) -> None:
    as_of, source, models = load_packaged_prices()
    assert table.as_of == as_of
    assert isinstance(as_of, date)
    assert source == table.source
    assert dict(table.models) == models
    for price in models.values():
        for value in (price.input, price.output, price.cached_input, price.cache_write):
            assert value is None or type(value) is Decimal


def test_packaged_table_covers_each_provider(table: PriceTable) -> None:
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-haiku-20241022",
        "claude-3-7-sonnet-20250219",
        "claude-sonnet-4-20250514",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-1-20250805",
        "claude-haiku-4-5-20251001",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "amazon.nova-lite-v1:0",
        "amazon.titan-embed-text-v2:0",
        "meta.llama3-1-8b-instruct-v1:0",
        "cohere.embed-english-v3",
    ):
        assert table.price_for(model) is not None, model


def test_anthropic_cache_prices_follow_the_published_multipliers(table: PriceTable) -> None:
    # 5-minute cache writes are 1.25x input and cache reads 0.1x input, for every Claude entry that has them —
    # except Claude 3 Haiku, which Anthropic publishes rounded to the cent ($0.30 write, $0.03 read on $0.25 input).
    for name, price in table.models.items():
        if "claude" in name and price.cache_write is not None and "claude-3-haiku" not in name:
            assert price.cache_write == price.input * D("1.25"), name
            assert price.cached_input == price.input * D("0.1"), name


@pytest.mark.parametrize(
    "doc",
    [
        {"as_of": "2025-01-01", "models": {"m": {"input": 1.5, "output": "1"}}},  # a float
        {"as_of": "2025-01-01", "models": {"m": {"input": "-1", "output": "1"}}},
        {"as_of": "2025-01-01", "models": {"m": {"input": "NaN", "output": "1"}}},
        {"as_of": "2025-01-01", "models": {"m": {"input": "abc", "output": "1"}}},
        {"as_of": "2025-01-01", "models": {"m": {"input": "1"}}},  # output missing
        {"as_of": "2025-01-01", "models": {"m": {"input": "1", "output": "1", "batch": "1"}}},
        {"as_of": "yesterday", "models": {}},
        {"as_of": "2025-01-01"},
    ],
)
def test_parse_rejects_bad_tables(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_prices(json.dumps(doc))


def test_claude_3_haiku_published_cache_prices(table: PriceTable) -> None:
    assert table.price_for("claude-3-haiku-20240307") == Price(D("0.25"), D("1.25"), D("0.03"), D("0.30"))


def test_price_rejects_non_decimal() -> None:
    with pytest.raises(ValueError):
        Price(input=1.5, output=D(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Price(input=D(1), output=D(-1))
