"""The live status page: one static HTML page, and the JSON document it polls, computed from the cluster's metrics.

`StatusBoard.document(text)` turns the Prometheus exposition the metrics hub serves on `/metrics` into the panels of
the Grafana dashboard (kuberay/monitoring/grafana-dashboard.json): rates from counter deltas over a short window,
percentiles from histogram bucket deltas, lag (a partition stuck on a commit marked stalled), errors, DLQ, breakers,
worker health, spool depth. It only reads
metrics text: it never records, merges or scrapes metrics and never opens a socket (the hub's HTTP server routes
`/status` and `/status.json` here).
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipelines.outcome import Outcome

STATUS_PATH = "/status"
STATUS_JSON_PATH = "/status.json"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

# circuit_breaker_state values (cluster.observability.breakers) and how bad each is: open > half-open > closed.
BREAKER_STATES = {0.0: "closed", 1.0: "open", 2.0: "half_open"}
_BREAKER_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}
QUANTILES = (0.5, 0.95, 0.99)
# A partition whose oldest uncommitted record is this old is marked stalled (red); the owner's own `stalled` state uses
# the same default (Settings.owner_stalled_after_s), and the PartitionStalled alert a longer one.
STALLED_AFTER_S = 30.0

Labels = tuple[tuple[str, str], ...]


def status_html() -> bytes:
    """The page itself (static; it fetches `status.json` relative to its own address)."""
    return resources.files("cluster.observability").joinpath("static/status.html").read_bytes()


class StatusPage:
    """What an HTTP server answers for the status page's two paths; it asks for the metrics text only when needed."""

    def __init__(self, board: StatusBoard | None = None) -> None:
        self._board = board or StatusBoard()

    def handle(self, path: str, metrics_text: Callable[[], str]) -> tuple[str, bytes] | None:
        """(content type, body) for `/status` or `/status.json` (query string ignored); None for any other path."""
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == STATUS_PATH:
            return HTML_CONTENT_TYPE, status_html()
        if path == STATUS_JSON_PATH:
            # orjson writes NaN and infinities as null, so the page always gets valid JSON.
            return JSON_CONTENT_TYPE, orjson.dumps(self._board.document(metrics_text()))
        return None


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one exposition, by sample name (`events_received_total`, `..._bucket`, a gauge's name)."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def sum_by(
        self, name: str, by: tuple[str, ...], where: dict[str, str] | None = None
    ) -> dict[tuple[str, ...], float]:
        """PromQL `sum by (<by>) (name{where})`: labels not in `by` (replicas, sources) are summed away."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self.samples.get(name, ()):
            if where and any(labels.get(k) != v for k, v in where.items()):
                continue
            out[tuple(labels.get(k, "") for k in by)] += value
        return dict(out)

    def pick_by(self, name: str, by: tuple[str, ...], better: Any) -> dict[tuple[str, ...], float]:
        """One value per `by` group from a gauge, keeping the value `better(a, b)` returns (max, min, ...)."""
        out: dict[tuple[str, ...], float] = {}
        for labels, value in self.samples.get(name, ()):
            key = tuple(labels.get(k, "") for k in by)
            out[key] = value if key not in out else better(out[key], value)
        return out


def parse(text: str, at: float) -> Snapshot:
    """Parse Prometheus text exposition format (what `/metrics` serves) into a snapshot taken at `at`."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return Snapshot(at, dict(samples))


def increase(before: float, after: float) -> float:
    """Counter increase between two readings; a drop means the counter restarted from zero (as PromQL treats it)."""
    return after - before if after >= before else after


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL `histogram_quantile`: `buckets` are (upper bound, cumulative count) pairs, `+Inf` included.

    Linear interpolation inside the bucket that holds the rank; the lowest bucket starts at 0; a rank in the `+Inf`
    bucket answers the highest finite bound. None when there are no observations.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0 or not math.isinf(ordered[-1][0]):
        return None
    rank = q * ordered[-1][1]
    below_bound, below_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return below_bound
            if count == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (count - below_count)
        below_bound, below_count = bound, count
    return below_bound


def _bucket_increase(base: Snapshot, cur: Snapshot, name: str) -> list[tuple[float, float]]:
    before = base.sum_by(f"{name}_bucket", ("le",))
    after = cur.sum_by(f"{name}_bucket", ("le",))
    return [(float(le), increase(before.get((le,), 0.0), count)) for (le,), count in after.items()]


def _rates(
    base: Snapshot, cur: Snapshot, name: str, by: tuple[str, ...], where: dict[str, str] | None = None
) -> dict[tuple[str, ...], float]:
    dt = cur.at - base.at
    before = base.sum_by(name, by, where)
    return {key: increase(before.get(key, 0.0), value) / dt for key, value in cur.sum_by(name, by, where).items()}


def _total(values: dict[tuple[str, ...], float]) -> float:
    return sum(values.values())


def _latency_ms(base: Snapshot | None, cur: Snapshot, name: str) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds of what was observed in the window; None when nothing was."""
    if base is None:
        return {f"p{round(q * 100)}": None for q in QUANTILES}
    buckets = _bucket_increase(base, cur, name)
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = histogram_quantile(q, buckets)
        out[f"p{round(q * 100)}"] = None if value is None else value * 1000.0
    return out


def _gauge(cur: Snapshot, name: str) -> float | None:
    values = cur.pick_by(name, (), max)
    return values.get((), None)


class StatusBoard:
    """Keeps the last few snapshots so every document has rates over a window of about `window_s` seconds.

    The hub calls `document()` on each `/status.json` request; nothing runs in between, so a page that polls every
    2 s sees rates over the last ~10 s, and the first request (nothing to compare with yet) has no rates.
    """

    def __init__(self, window_s: float = 10.0, min_interval_s: float = 0.5, max_age_s: float = 120.0) -> None:
        self._window_s = window_s
        self._min_interval_s = min_interval_s
        self._max_age_s = max_age_s
        self._history: deque[Snapshot] = deque()
        self._lock = threading.Lock()

    def document(self, text: str, now: float | None = None) -> dict[str, Any]:
        cur = parse(text, time.time() if now is None else now)
        with self._lock:
            # Keep the newest reading at least a window old and everything after it: the base is the oldest kept.
            while len(self._history) > 1 and self._history[1].at <= cur.at - self._window_s:
                self._history.popleft()
            base = self._base_for(cur.at)
            if not self._history or cur.at - self._history[-1].at >= self._min_interval_s:
                self._history.append(cur)
        return summarize(base, cur)

    def _base_for(self, now: float) -> Snapshot | None:
        for snapshot in self._history:  # oldest first: the widest window available
            age = now - snapshot.at
            if age > self._max_age_s:
                continue
            return snapshot if age >= self._min_interval_s else None
        return None


def summarize(base: Snapshot | None, cur: Snapshot) -> dict[str, Any]:
    """The status document: the dashboard's panels computed from `cur`, with rates against `base` (None: no rates)."""
    rated = base is not None

    def rates(name: str, by: tuple[str, ...], where: dict[str, str] | None = None) -> dict[tuple[str, ...], float]:
        return _rates(base, cur, name, by, where) if base is not None else {}

    received = rates("events_received_total", ("type",))
    processed = rates("events_processed_total", ("type", "status"))
    dead = rates("events_processed_total", ("type",), {"status": Outcome.DEAD_LETTERED})
    invalid = rates("validation_errors_total", ("reason",))
    requests = rates("http_requests_total", ("route", "status"))
    types = sorted(
        {t for (t,) in cur.sum_by("events_received_total", ("type",))}
        | {t for (t, _) in cur.sum_by("events_processed_total", ("type", "status"))}
    )
    by_type = [
        {
            "type": t,
            "received_per_s": received.get((t,), 0.0) if rated else None,
            **{f"{status}_per_s": processed.get((t, status), 0.0) if rated else None for status in Outcome},
        }
        for t in types
    ]
    lag = cur.pick_by("queue_lag", ("topic", "partition"), max)
    age = cur.pick_by("partition_oldest_uncommitted_age_seconds", ("topic", "partition"), max)
    failures = rates("partition_commit_failures_total", ("topic", "partition"))
    breakers = cur.pick_by(
        "circuit_breaker_state",
        ("dependency",),
        lambda a, b: a if _severity(a) >= _severity(b) else b,
    )
    health = cur.pick_by("worker_health", ("worker",), min)
    batch = _bucket_increase(base, cur, "commit_batch_size") if base is not None else []
    batch_count = sum(c for le, c in batch if math.isinf(le))
    batch_sum = (
        increase(_total(base.sum_by("commit_batch_size_sum", ())), _total(cur.sum_by("commit_batch_size_sum", ())))
        if base is not None
        else 0.0
    )
    partitions = [
        {
            "topic": topic,
            "partition": int(p) if p.isdigit() else p,
            "lag": lag.get((topic, p), 0.0),
            "oldest_uncommitted_s": age.get((topic, p), 0.0),
            "commit_failures_per_s": failures.get((topic, p), 0.0) if rated else None,
            "stalled": age.get((topic, p), 0.0) >= STALLED_AFTER_S,
        }
        for topic, p in sorted(set(lag) | set(age), key=lambda k: (k[0], _as_int(k[1])))
    ]
    return {
        "generated_at": cur.at,
        "window_s": cur.at - base.at if base is not None else None,
        "throughput": {
            "received_per_s": _total(received) if rated else None,
            "processed_per_s": _total(processed) if rated else None,
            "received_total": _total(cur.sum_by("events_received_total", ())),
            "processed_total": _total(cur.sum_by("events_processed_total", ())),
            "by_type": by_type,
        },
        "latency_ms": {
            "processing": _latency_ms(base, cur, "processing_duration_seconds"),
            "end_to_end": _latency_ms(base, cur, "end_to_end_latency_seconds"),
            "publish": _latency_ms(base, cur, "publish_duration_seconds"),
        },
        "lag": {
            "total": sum(lag.values()),
            "partitions": partitions,
            "stalled": sum(1 for p in partitions if p["stalled"]),
        },
        "errors": {
            "dead_lettered_per_s": _total(dead) if rated else None,
            "validation_errors_per_s": _total(invalid) if rated else None,
            "http_5xx_per_s": sum(v for (_, s), v in requests.items() if s.startswith("5")) if rated else None,
            "dead_lettered_total": _total(cur.sum_by("events_processed_total", (), {"status": Outcome.DEAD_LETTERED})),
            "validation_errors_total": _total(cur.sum_by("validation_errors_total", ())),
            "validation_by_reason": [
                {"reason": reason, "per_s": value} for (reason,), value in sorted(invalid.items()) if value > 0
            ],
        },
        "dlq_size": _gauge(cur, "dlq_size"),
        "spool_depth": _gauge(cur, "spool_depth"),
        "breakers": [{"dependency": d, "state": _breaker(v), "value": v} for (d,), v in sorted(breakers.items())],
        "workers": {
            "total": len(health),
            "healthy": sum(1 for v in health.values() if v >= 1),
            "items": [{"worker": w, "healthy": v >= 1} for (w,), v in sorted(health.items())],
        },
        "commit_batch": {
            "p50": histogram_quantile(0.5, batch),
            "p99": histogram_quantile(0.99, batch),
            "mean": batch_sum / batch_count if batch_count else None,
        },
        "api": {
            "requests_per_s": _total(requests) if rated else None,
            "by_route_status": [
                {"route": route, "status": status, "per_s": value}
                for (route, status), value in sorted(requests.items())
                if value > 0
            ],
        },
    }


def _breaker(value: float) -> str:
    return BREAKER_STATES.get(value, "unknown")


def _severity(value: float) -> int:
    return _BREAKER_SEVERITY.get(_breaker(value), len(_BREAKER_SEVERITY))  # an unknown value is the worst


def _as_int(text: str) -> int:
    return int(text) if text.isdigit() else -1
