"""Builders of valid and invalid events for integration tests, and the effects a correct pipeline must show.

Test data only; expected totals are computed here independently of the handlers' code paths.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipelines.batch import CommitBatch, ProcessedEvent
from pipelines.effects import Effect

RATES = {"USD": "1", "EUR": "1.08", "GBP": "1.27", "JPY": "0.0067", "CHF": "1.13", "CAD": "0.73", "AUD": "0.66"}
TS = "2026-11-24T10:00:00Z"


@dataclass
class Expected:
    """What the read models must show for the events a test sent (each counted once)."""

    spend: dict[str, Decimal] = field(default_factory=dict)
    tx_count: Counter[str] = field(default_factory=Counter)
    device_count: Counter[str] = field(default_factory=Counter)
    action_count: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, event: dict[str, Any]) -> None:
        if event["type"] == "transaction":
            base = (Decimal(event["amount"]) * Decimal(RATES[event["currency"]])).quantize(Decimal("0.000001"))
            self.spend[event["user_id"]] = self.spend.get(event["user_id"], Decimal(0)) + base
            self.tx_count[event["user_id"]] += 1
        elif event["type"] == "sensor":
            self.device_count[event["device_id"]] += 1
        else:
            self.action_count[(event["user_id"], event["action"])] += 1


def valid_event(prefix: str, n: int, rng: random.Random, with_id: bool = True) -> dict[str, Any]:
    kind = n % 3
    event: dict[str, Any]
    if kind == 0:
        event = {
            "type": "transaction",
            "timestamp": TS,
            "user_id": f"{prefix}-u{rng.randrange(20)}",
            "amount": f"{rng.randrange(1, 100000) / 100:.2f}",
            "currency": rng.choice(list(RATES)),
            "metadata": {"n": n},
        }
    elif kind == 1:
        event = {
            "type": "sensor",
            "timestamp": TS,
            "device_id": f"{prefix}-d{rng.randrange(20)}",
            "reading": round(rng.uniform(0, 40), 3),  # physically possible in every unit drawn below (kPa, %)
            "unit": rng.choice(["C", "F", "kPa", "%"]),
            "location": {"lat": 52.5, "lon": 13.4},
        }
    else:
        event = {
            "type": "user_action",
            "timestamp": TS,
            "user_id": f"{prefix}-u{rng.randrange(20)}",
            "action": rng.choice(["click", "view", "buy"]),
            "target": f"item-{rng.randrange(5)}",
            "metadata": {},
        }
    if with_id:
        event["id"] = f"{prefix}:{n}"
    return event


def read_models(pipeline: Any, prefix: str) -> Expected:
    """What PostgreSQL's read models hold for one test's entities."""
    seen = Expected()
    like = f"{prefix}-%"
    for user, total, count in pipeline.query(
        "SELECT user_id, total_amount, tx_count FROM user_totals WHERE user_id LIKE %s", like
    ):
        seen.spend[user] = Decimal(total)
        seen.tx_count[user] = count
    for device, count in pipeline.query(
        "SELECT device_id, sum(reading_count) FROM device_stats WHERE device_id LIKE %s GROUP BY 1", like
    ):
        seen.device_count[device] = int(count)
    for user, action, count in pipeline.query(
        "SELECT user_id, action, count FROM user_action_counts WHERE user_id LIKE %s", like
    ):
        seen.action_count[(user, action)] = count
    return seen


def one_event_batch(
    topic: str, epoch: int, offset: int, event_id: str, effects: tuple[Effect, ...] = (), entity_key: str = "d"
) -> CommitBatch:
    """A CommitBatch of one processed event at `offset`, continuing from it, for store-level tests."""
    event = ProcessedEvent(
        event_id=event_id,
        type="user_action",
        schema_version=1,
        offset=offset,
        entity_key=entity_key,
        payload_json='{"type": "user_action"}',
        result_json="{}",
        effects=effects,
        received_at=time.time(),
    )
    return CommitBatch(
        topic=topic,
        partition=0,
        epoch=epoch,
        owner_id="test",
        expected_offset=offset,
        next_offset=offset + 1,
        consumed_at=time.time(),
        processed=(event,),
    )
