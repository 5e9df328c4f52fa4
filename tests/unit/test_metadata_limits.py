"""Specification of metadata limits: depth, serialised size, key length and JSON-only values, on every type with it.

Issue 8, finding 3: metadata nested 256 levels (715 bytes) passed validation, then serialisation raised: a 500.
"""

from __future__ import annotations

import pytest

from pipelines.envelope import Envelope
from pipelines.errors import InvalidEvent
from pipelines.limits import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_METADATA_KEY_CHARS
from pipelines.registry import default_registry


def nested(levels: int) -> dict:
    """An object `levels` deep, the outermost counted as 1 (built without recursion)."""
    root: dict = {}
    node = root
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return root


@pytest.fixture(params=["transaction", "user_action"])
def with_metadata(request, transaction_data, user_action_data):
    """Every event type that carries metadata."""
    build = transaction_data if request.param == "transaction" else user_action_data
    return lambda metadata: build(id="m-1", metadata=metadata)


@pytest.fixture
def registry():
    return default_registry()


def metadata_error(registry, raw) -> str:
    with pytest.raises(InvalidEvent) as caught:
        registry.parse(raw)
    errors = {e.loc: e for e in caught.value.errors}
    assert list(errors) == ["metadata"]
    assert errors["metadata"].type == "metadata_limit"
    return errors["metadata"].msg


def test_metadata_nested_256_levels_is_a_validation_error_not_a_serialisation_crash(registry, with_metadata):
    assert "nested at most 8 levels" in metadata_error(registry, with_metadata(nested(256)))


@pytest.mark.parametrize("levels", [MAX_METADATA_DEPTH + 1, 1000, 100_000])
def test_metadata_deeper_than_the_limit_is_refused(registry, with_metadata, levels):
    metadata_error(registry, with_metadata(nested(levels)))


def test_metadata_at_the_depth_limit_is_accepted_and_encodes(registry, with_metadata):
    event = registry.parse(with_metadata(nested(MAX_METADATA_DEPTH)))

    assert Envelope.encode_event(event, 1.0)


def test_metadata_deep_inside_lists_counts_every_level(registry, with_metadata):
    deep: list = []
    node = deep
    for _ in range(MAX_METADATA_DEPTH):
        node.append([])
        node = node[0]

    metadata_error(registry, with_metadata({"l": deep}))


def test_metadata_larger_than_the_byte_limit_is_refused(registry, with_metadata):
    assert "at most 16384 bytes" in metadata_error(registry, with_metadata({"blob": "x" * MAX_METADATA_BYTES}))


def test_metadata_key_longer_than_the_limit_is_refused(registry, with_metadata):
    metadata_error(registry, with_metadata({"k" * (MAX_METADATA_KEY_CHARS + 1): 1}))
    metadata_error(registry, with_metadata({"inner": {"k" * (MAX_METADATA_KEY_CHARS + 1): 1}}))


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2**64, -(2**63) - 1, object(), b"bytes", (1, 2), {1, 2}])
def test_metadata_values_must_be_plain_json(registry, with_metadata, value):
    metadata_error(registry, with_metadata({"v": [value]}))


def test_metadata_of_ordinary_json_is_accepted(registry, with_metadata):
    metadata = {"channel": "web", "basket": {"items": [1, 2.5, None, True, "x"], "coupon": None}, "n": -(2**63)}

    assert registry.parse(with_metadata(metadata)).metadata == metadata  # type: ignore[attr-defined]


def test_the_published_schema_states_the_metadata_limits(registry):
    for name in ("transaction", "user_action"):
        metadata = registry.json_schemas()[name]["1"]["properties"]["metadata"]
        assert metadata["propertyNames"] == {"maxLength": MAX_METADATA_KEY_CHARS}
        assert "nested at most 8 levels" in metadata["description"]
