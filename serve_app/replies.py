"""The API's answers to ingestion requests: one builder per kind of answer, so each error code is spelled once.

Bodies carry advice for the client and, for 5xx, an error id; they never carry exception text, URLs or settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.adapters.kafka_producer import Delivered
from cluster.observability.metrics import METRICS
from cluster.observability.recording import invalid_reason
from pipelines.errors import InvalidEvent
from pipelines.rate_lease import Decision
from pipelines.rate_limit import Measure
from serve_app.admission import InflightGate
from serve_app.delivery import EVENT_TOO_LARGE, Outcome, Refused, Rejected, Spooled, Unknown

# EVENT_TOO_LARGE (spelled once, in delivery, which this module imports) is used as replies.EVENT_TOO_LARGE too.
RESEND_ADVICE = "send them again with the same ids: the pipeline drops duplicates by event id"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def error(status: int, code: str, reason: str, **extra: Any) -> Reply:
    """A rejected request, counted in validation_errors_total by its error code."""
    METRICS.validation_errors.labels(code).inc()
    return Reply(status, {"error": code, "reason": reason, **extra})


def body_too_large(limit: int, size: int | None = None) -> Reply:
    """413 with the limit; `size` when known (declared, or read whole), else the body was cut off at the limit."""
    got = f"the body holds {size} bytes" if size is not None else "the body exceeds the limit"
    return error(413, "payload_too_large", f"{got}: at most {limit} bytes are taken", limit=limit)


def event_too_large(size: int, limit: int) -> str:
    return f"the event's record is {size} bytes, over the {limit}-byte limit per event"


def invalid(exc: InvalidEvent) -> Reply:
    """A rejected event, counted in validation_errors_total by its first field error's code."""
    METRICS.validation_errors.labels(invalid_reason(exc)).inc()
    return Reply(422, {"error": "validation_failed", "reason": exc.reason, "errors": [e.as_dict() for e in exc.errors]})


def overloaded(gate: InflightGate, events: int) -> Reply:
    reason = f"{gate.inflight} events in flight; {events} more would exceed this replica's limit of {gate.limit}"
    return Reply(429, {"error": "overloaded", "reason": reason}, {"Retry-After": "1"})


def bodies_over_budget() -> Reply:
    """429: this replica holds its budget of request-body bytes (max_inflight_body_bytes); nothing was read."""
    reason = "this replica is reading as many request bytes as it may hold; nothing was taken, retry shortly"
    return Reply(429, {"error": "overloaded", "reason": reason}, {"Retry-After": "1"})


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The IETF draft's RateLimit-* fields (whole seconds, rounded up), on admitted and refused answers alike."""
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_s)),
    }


def rate_limited(decision: Decision, measure: Measure) -> Reply:
    """429: the key spent its requests (or events) per minute; nothing of the request was read or taken."""
    retry_after = max(1, math.ceil(decision.retry_after_s))
    what = "requests" if measure is Measure.REQUESTS else "events"
    reason = f"this API key may send {decision.limit} {what} per minute; nothing was taken, retry in {retry_after}s"
    headers = {**rate_limit_headers(decision), "Retry-After": str(retry_after)}
    return Reply(429, {"error": "rate_limited", "reason": reason}, headers)


def not_started(error_id: str) -> Reply:
    """503: the replica did not finish starting (spool open, first look) within the request's bound."""
    reason = "this replica is still starting; nothing was taken, retry shortly"
    return Reply(503, {"error": "starting", "reason": reason, "error_id": error_id}, {"Retry-After": "1"})


def refused(refusal: Refused, **extra: Any) -> Reply:
    """503: not taken. The body of a single event carries its `id` (`extra`): a retry must reuse it, since a broker
    timeout before the refusal may have written the record (duplicates are dropped by id)."""
    return Reply(
        503,
        {"error": refusal.error, "reason": f"{refusal.reason}; {RESEND_ADVICE}", "error_id": refusal.error_id, **extra},
        {"Retry-After": str(refusal.retry_after_s)},
    )


def unknown(outcome: Unknown, **extra: Any) -> Reply:
    """504: the spool did not confirm the events in time; they may or may not have been taken (like timed_out)."""
    reason = f"the spool did not confirm the events in time; they may or may not have been taken: {RESEND_ADVICE}"
    return Reply(
        504, {"error": "timeout", "reason": reason, "error_id": outcome.error_id, **extra}, {"Retry-After": "1"}
    )


def rejected(rejection: Rejected, event_id: str) -> Reply:
    """A single event the broker refuses for good: 413 when it is too large, else 422."""
    METRICS.validation_errors.labels(rejection.error).inc()
    status = 413 if rejection.error == EVENT_TOO_LARGE else 422
    return Reply(status, {"error": rejection.error, "reason": rejection.reason, "id": event_id})


def database_unavailable(error_id: str) -> Reply:
    """503 on a read route: PostgreSQL did not answer in time (down, or every connection busy)."""
    reason = "the database did not answer; retry later"
    return Reply(503, {"error": "database_unavailable", "reason": reason, "error_id": error_id}, {"Retry-After": "5"})


def timed_out(timeout_s: float, error_id: str, **extra: Any) -> Reply:
    """The request outlived its bound after delivery started: what was sent may or may not have been taken."""
    reason = (
        f"the request did not finish within {timeout_s:g}s; events marked 'unknown' may or may not have been taken: "
        f"{RESEND_ADVICE}"
    )
    return Reply(504, {"error": "timeout", "reason": reason, "error_id": error_id, **extra}, {"Retry-After": "1"})


def accepted(event_id: str, event_type: str, outcome: Outcome, index: int | None = None) -> dict[str, Any]:
    """The answer for a taken event: its log position, or `spooled` when it waits in the spool for the broker; a
    batch's item leads with its `index` (built in place: a batch answers one of these per event)."""
    item: dict[str, Any] = {} if index is None else {"index": index}
    item["id"], item["status"], item["type"] = event_id, "accepted", event_type
    if isinstance(outcome, Delivered):
        item["topic"], item["partition"], item["offset"] = outcome.topic, outcome.partition, outcome.offset
    elif isinstance(outcome, Spooled):
        item["spooled"] = True
    else:
        raise TypeError(f"not an accepted outcome: {outcome!r}")
    return item
