"""Micro-benchmark of `Registry.parse`: CPU µs per event on a mix of the three built-in types, in one process.

Measures validation only (what the API and the partition owner each pay per event); no I/O.
Run: python -m benchmarks.parse_cost [--events 30000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pipelines.registry import default_registry


def mix(n: int) -> list[dict[str, Any]]:
    """Typical events: a transaction and a user action with small metadata, a sensor reading."""
    ts = "2026-11-24T10:00:00.123Z"
    events: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            events.append(
                {
                    "id": f"e-{i}",
                    "type": "transaction",
                    "timestamp": ts,
                    "user_id": f"u-{i % 97}",
                    "amount": "12.50",
                    "currency": "EUR",
                    "metadata": {"channel": "web", "basket": {"items": 3, "coupon": None}},
                }
            )
        elif kind == 1:
            events.append(
                {
                    "id": f"e-{i}",
                    "type": "sensor",
                    "timestamp": ts,
                    "device_id": f"d-{i % 50}",
                    "reading": 21.5 + i % 10,
                    "unit": ("C", "kPa", "%", "lux")[i % 4],
                    "location": {"lat": 52.52, "lon": 13.405},
                }
            )
        else:
            events.append(
                {
                    "id": f"e-{i}",
                    "type": "user_action",
                    "timestamp": ts,
                    "user_id": f"u-{i % 97}",
                    "action": "click",
                    "target": "checkout-button",
                    "metadata": {"page": "/cart", "ab": ["b", 2]},
                }
            )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    registry = default_registry()
    events = mix(args.events)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        for raw in events:
            registry.parse(raw)
        best = min(best, time.process_time() - started)
    print(f"Registry.parse: {best / args.events * 1e6:.2f} µs/event (best of {args.repeat}, {args.events} events)")


if __name__ == "__main__":
    main()
