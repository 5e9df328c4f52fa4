"""Circuit breakers wired to the outside world: every transition is logged and exported as a Prometheus gauge.

The state machine itself is pure (pipelines.policies.breaker); this module only adds the side effects.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from cluster.settings import Settings
from pipelines.policies.breaker import BreakerState, CircuitBreaker, Transition

log = logging.getLogger("eventpipe.breaker")

CIRCUIT_BREAKER_STATE = Gauge(
    "circuit_breaker_state",
    "State of the circuit breaker around a dependency: 0 closed, 1 open, 2 half-open",
    ["dependency"],
    registry=None,  # not prometheus-client's default registry: the catalogue's (metrics.REGISTRY) holds it
)


def _on_transition(transition: Transition) -> None:
    CIRCUIT_BREAKER_STATE.labels(transition.dependency).set(transition.new.gauge_value)
    level = logging.WARNING if transition.new is BreakerState.OPEN else logging.INFO
    log.log(
        level,
        "circuit breaker %s: %s -> %s (%s)",
        transition.dependency,
        transition.old.value,
        transition.new.value,
        transition.reason,
        extra={
            "dependency": transition.dependency,
            "breaker_from": transition.old.value,
            "breaker_to": transition.new.value,
            "consecutive_failures": transition.consecutive_failures,
        },
    )


def breaker(dependency: str, settings: Settings) -> CircuitBreaker:
    """A breaker for `dependency` ("kafka", "postgres", "enrichment") with the configured thresholds."""
    CIRCUIT_BREAKER_STATE.labels(dependency).set(BreakerState.CLOSED.gauge_value)
    return CircuitBreaker(
        dependency,
        failure_threshold=settings.breaker_failure_threshold,
        reset_timeout_s=settings.breaker_reset_timeout_s,
        on_transition=_on_transition,
    )
