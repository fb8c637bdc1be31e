"""The usage event (version 1): its fields, exact money, stable idempotency ids, and the published JSON Schema."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest

from aigw.events.schema import EVENT_TYPE, SCHEMA_VERSION, encode, money, to_event
from aigw.store.usage import UsageRecord
from tests.events.helpers import SCHEMA_PATH, expected_event, record, without_ids

VARIANTS = [
    record(1),
    record(2, cost_usd=None, provider=None, upstream_model=None, status=502, error_type="upstream_error", cache=None),
    record(3, cache="hit", cache_hit=True, saved_cost_usd=Decimal("0.25"), cost_usd=Decimal(0), key_id=None),
    record(4, cache="bypass", prompt_tokens=0, completion_tokens=0, latency_ms=0.0),
]


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("rec", VARIANTS, ids=lambda r: r.request_id)
def test_event_carries_the_record_field_for_field(rec: UsageRecord) -> None:
    event = to_event(rec)
    assert event["type"] == EVENT_TYPE == "aigw.usage.v1"
    assert event["schema_version"] == SCHEMA_VERSION == 1
    assert without_ids(event) == expected_event(rec)


@pytest.mark.parametrize("rec", VARIANTS, ids=lambda r: r.request_id)
def test_encoded_events_validate_against_the_documented_schema(rec: UsageRecord) -> None:
    encoded = encode(rec)
    _validator().validate(orjson.loads(encoded.body))


def test_schema_document_matches_the_code() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["type"]["const"] == EVENT_TYPE
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert set(schema["required"]) == set(to_event(record(0)))  # every field documented, none invented


def test_money_is_an_exact_decimal_string_rounded_like_the_ledger() -> None:
    assert money(None) is None
    assert money(Decimal(0)) == "0.000000000"  # not "0E-9"
    assert money(Decimal("0.0000000005")) == "0.000000001"  # half away from zero, as NUMERIC rounds
    assert money(Decimal("0.0000000004999")) == "0.000000000"
    assert money(Decimal("123456.1")) == "123456.100000000"


def test_event_id_is_stable_and_unique_per_ledger_row() -> None:
    a = record(1)
    assert encode(a).event_id == encode(a).event_id == to_event(a)["event_id"]
    # A client may reuse its x-request-id: the event id still tells the two requests apart.
    reused = record(1, created_at=a.created_at + timedelta(seconds=1))
    other_tenant = record(1, tenant_id="tenant-b", request_id=a.request_id)
    assert len({encode(r).event_id for r in (a, reused, other_tenant)}) == 3
    assert encode(a).tenant_id == a.tenant_id
