"""Specification of the API envelope: a lossless round trip, and InvalidEvent (never anything else) for garbage."""

from __future__ import annotations

import pytest

from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.registry import default_registry


@pytest.fixture
def envelope(transaction_data) -> Envelope:
    event = default_registry().parse(
        transaction_data(correlation_id="corr-1", causation_id="cause-1", parent_ids=["p-1", "p-2"])
    )
    return Envelope.wrap(event, "evt-1", 1714557600.25, idempotency_key="idem-1", trace_context="00-abc-01")


def test_wrap_puts_the_assigned_id_into_the_payload(envelope):
    assert envelope.id == "evt-1"
    assert envelope.payload["id"] == "evt-1"
    assert envelope.type == "transaction"
    assert envelope.schema_version == 1
    assert envelope.correlation_id == "corr-1"
    assert envelope.parent_ids == ("p-1", "p-2")


def test_wrap_prefers_the_events_own_correlation_id_over_the_header(transaction_data):
    registry = default_registry()
    with_own = registry.parse(transaction_data(correlation_id="own"))
    without = registry.parse(transaction_data())

    assert Envelope.wrap(with_own, "e", 0.0, correlation_id="header").correlation_id == "own"
    assert Envelope.wrap(without, "e", 0.0, correlation_id="header").correlation_id == "header"


def test_encoded_envelope_decodes_to_an_equal_envelope(envelope):
    assert Envelope.decode(envelope.encode()) == envelope


def test_wrapped_payload_parses_back_to_the_same_event(envelope, transaction_data):
    registry = default_registry()
    original = registry.parse(
        transaction_data(correlation_id="corr-1", causation_id="cause-1", parent_ids=["p-1", "p-2"])
    )

    decoded = registry.parse(Envelope.decode(envelope.encode()).payload)

    assert decoded == original.model_copy(update={"id": "evt-1"})


def test_decode_fills_defaults_for_optional_fields():
    decoded = Envelope.decode(b'{"id": "e", "type": "sensor", "payload": {}, "received_at": 5}')

    assert decoded == Envelope(id="e", type="sensor", schema_version=1, payload={}, received_at=5.0)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="broken-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"id": "e", "type": "sensor", "payload": {}, "received_at": 1e999}', id="infinite-number"),
        pytest.param(b"[1, 2, 3]", id="json-array"),
        pytest.param(b'"a string"', id="json-string"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b"42", id="json-number"),
        pytest.param(b'{"type": "sensor", "payload": {}, "received_at": 1}', id="missing-id"),
        pytest.param(b'{"id": "e", "payload": {}, "received_at": 1}', id="missing-type"),
        pytest.param(b'{"id": "e", "type": "sensor", "received_at": 1}', id="missing-payload"),
        pytest.param(b'{"id": "e", "type": "sensor", "payload": {}}', id="missing-received-at"),
        pytest.param(b'{"id": "e", "type": "sensor", "payload": 3, "received_at": 1}', id="payload-not-object"),
        pytest.param(b'{"id": "e", "type": "sensor", "payload": {}, "received_at": "soon"}', id="bad-received-at"),
        pytest.param(
            b'{"id": "e", "type": "sensor", "payload": {}, "received_at": 1, "schema_version": "one"}',
            id="bad-schema-version",
        ),
        pytest.param(
            b'{"id": "e", "type": "sensor", "payload": {}, "received_at": 1, "parent_ids": 7}', id="bad-parent-ids"
        ),
    ],
)
def test_decoding_garbage_raises_invalid_event(data):
    with pytest.raises(InvalidEvent) as caught:
        Envelope.decode(data)

    assert caught.type is InvalidEvent
    assert caught.value.reason.startswith(("record is not valid JSON", "record is not an eventpipe envelope"))
