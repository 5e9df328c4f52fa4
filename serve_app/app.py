"""The Ray Serve application: one ingress deployment serving ingestion, the read API, schemas and health.

Clients (Kafka producer, kafka breaker, spool and read pools) are built once per replica in the constructor; routes
only translate HTTP. Every route but health, readiness and the OpenAPI document first authenticates its API key from
the headers (serve_app/auth.py: keys held in memory, no query per request). Limits come before work: media type and
declared size are judged before the body is read, the body is read under a byte cap, and a request's whole handling
is bounded in time. No 5xx body carries exception text: it carries advice and an error id, and the log line with that
id carries the cause.
"""

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, Response
from ray import serve

from actors.metrics_hub import start_metrics_push
from actors.rate_limiter import LimiterClient
from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import KafkaPublisher
from cluster.adapters.key_store import KeyStore
from cluster.adapters.read_store import ReadStore
from cluster.adapters.spool import AsyncSpool
from cluster.observability.breakers import breaker
from cluster.observability.event_spans import IngestSpans
from cluster.observability.logs import bind_correlation, setup_logging
from cluster.observability.tracing import TRACEPARENT, Tracing, forced_parent
from cluster.settings import Settings
from pipelines.access import Principal, Scope
from pipelines.rate_lease import Decision
from pipelines.rate_limit import Measure
from pipelines.registry import default_registry
from serve_app import replies
from serve_app.admission import HandoverPolicy, InflightGate
from serve_app.auth import UNAUTHENTICATED, Authenticator
from serve_app.body import BadContentLength, BodyLease, declared_length
from serve_app.delivery import Delivery, SpoolWatch
from serve_app.edge import receive
from serve_app.http_metrics import RequestMetrics
from serve_app.incidents import Incidents
from serve_app.ingest import Ingestor, Reply, RequestMeta
from serve_app.openapi import (
    INGEST_ERRORS,
    LIST_ERRORS,
    OPEN_ERRORS,
    READ_ERRORS,
    AcceptedEvent,
    BatchAccepted,
    batch_body_schema,
    error_responses,
    install,
    protected,
    readiness_responses,
    single_body_schema,
    with_security_schemes,
)
from serve_app.rate_limits import RateLimits
from serve_app.readiness import CachedReadiness
from serve_app.reads import Reads

log = logging.getLogger(__name__)


class _Api(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """The generated document with the API key's security schemes (routes name them in `protected()`)."""
        return with_security_schemes(super().openapi())


app = _Api(
    title="eventpipe",
    version="0.1.0",
    description="Exactly-once event ingestion and processing. Events are acknowledged (202) only after the broker "
    "acknowledged them; processing status, audit trail and read models are served from PostgreSQL.",
    default_response_class=ORJSONResponse,
)
install(app)  # the event models join the document's components; FastAPI's own 422 model leaves it
app.add_middleware(RequestMetrics)  # http_requests_total{route,method,status}
_INCIDENTS = Incidents(log)  # error ids of this replica's 5xx answers (a log helper, not a client)
_READY_TTL_S = 1.0
_PING_TIMEOUT_S = 1.0


@app.exception_handler(Exception)
async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Any exception a route let through: a generic 500 with an error id; the cause and traceback go to the log."""
    where = f"{request.method} {request.url.path}"
    error_id = _INCIDENTS.report(f"unexpected error answering {where}", exc, level=logging.ERROR)
    body = {"error": "internal_error", "reason": "the request failed unexpectedly; retry later", "error_id": error_id}
    return ORJSONResponse(body, status_code=500)


@app.exception_handler(RequestValidationError)
async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
    """A path or query parameter out of its documented range: 422 in the API's own error body, not FastAPI's."""
    errors = [
        {"loc": ".".join(map(str, e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return _answer(replies.error(422, "validation_failed", "a parameter is out of its documented range", errors=errors))


def _reply(reply: Reply, meta: RequestMeta, decision: Decision | None = None) -> Response:
    """The answer, with the request's rate-limit headers when it was admitted (a refusal's own headers win)."""
    limit_headers = replies.rate_limit_headers(decision) if decision is not None else {}
    headers = {**limit_headers, **(reply.headers or {}), "X-Correlation-ID": meta.correlation_id or ""}
    return ORJSONResponse(reply.body, status_code=reply.status, headers=headers)


def _principal(request: Request) -> Principal:
    """The authenticated principal of a request that passed ApiGateway._authorize (tenant, scopes, limits)."""
    principal: Principal = request.state.principal
    return principal


def _tenant(request: Request) -> str:
    """The tenant this request acts for: the one accessor every route asks (ingest scopes ids by it, reads filter by
    it): its API key's tenant (the default tenant's when auth is off)."""
    return _principal(request).tenant


def _meta(request: Request, deadline: float) -> RequestMeta:
    """The request's metadata; its X-Correlation-ID (1-128 characters), else a new one, is bound to its log lines. A
    `traceparent` with the sampled flag makes its events' traces continue the client's (others are ignored).

    Raises BadContentLength for a Content-Length that is not a non-negative integer.
    """
    h = request.headers
    correlation_id = h.get("x-correlation-id")
    if not correlation_id or len(correlation_id) > 128:
        correlation_id = uuid.uuid4().hex
    bind_correlation(correlation_id)
    return RequestMeta(
        h.get("content-type"),
        h.get("idempotency-key"),
        correlation_id,
        tenant=_tenant(request),
        content_length=declared_length(h.get("content-length")),
        deadline=deadline,
        trace_parent=forced_parent(h.get(TRACEPARENT)),
        content_encoding=h.get("content-encoding"),
    )


def _answer(reply: Reply) -> Response:
    return ORJSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


@serve.deployment(
    name="ApiGateway",
    max_ongoing_requests=256,
    max_queued_requests=2048,  # bounded: Serve answers 503 beyond it instead of queueing without limit
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(app)
class ApiGateway:
    def __init__(self, settings: Settings) -> None:
        settings = settings.in_process()  # secrets come from this process's environment, not Ray
        setup_logging(settings, "api")
        self._tracing = Tracing.start(settings, "api")
        start_metrics_push(settings, "api")
        self._settings = settings
        database_url = settings.database_url.get_secret_value()
        if not settings.auth_enabled:
            log.warning("API keys are off (auth_enabled=false): every request acts for the default tenant, all scopes")
        store = KeyStore(database_url) if settings.auth_enabled else None
        anonymous = dataclasses.replace(  # auth off: every request, with the default limits
            UNAUTHENTICATED,
            requests_per_minute=settings.rate_limit_requests_per_minute,
            events_per_minute=settings.rate_limit_events_per_minute,
        )
        self._auth = Authenticator(store, settings.auth_refresh_s, _INCIDENTS, anonymous)
        self._auth.load()  # the keys before the first request; a failure is retried on the refresh timer
        self._registry = default_registry(
            settings.base_currency,
            settings.risk_amount_threshold,
            event_time_min=settings.event_time_min,
            event_time_max_ahead_s=settings.event_time_max_ahead_s,
        )
        self._publisher = KafkaPublisher(
            producer_config(
                settings.kafka_bootstrap,
                settings.producer_linger_ms,
                message_timeout_ms=settings.producer_message_timeout_ms,
                message_max_bytes=settings.kafka_message_max_bytes,
            )
        )
        self._spool = AsyncSpool(database_url) if settings.spool_enabled else None
        self._watch = SpoolWatch(self._spool) if self._spool is not None else None
        self._delivery = Delivery(
            self._publisher,
            breaker("kafka", settings),
            self._spool,
            self._watch,
            settings.spool_max_rows,
            spool_max_bytes=settings.spool_max_bytes,
            incidents=_INCIDENTS,
            handover=HandoverPolicy(
                max_wait_s=settings.spool_handover_max_wait_s,
                max_rows=settings.spool_drain_batch,
                cooldown_s=2 * settings.spool_handover_max_wait_s,
            ),
        )
        self._ingestor = Ingestor(
            settings,
            self._registry,
            self._delivery,
            InflightGate(settings.max_inflight_events),
            IngestSpans(self._tracing),
            _INCIDENTS,
        )
        self._body_budget = InflightGate(settings.max_inflight_body_bytes)  # bytes of bodies held at once
        self._read_store = ReadStore(database_url)
        self._reads_open = False
        self._reads = Reads(self._store, _INCIDENTS, settings.read_timeout_s)
        self._readiness = CachedReadiness(self._compute_readiness, ttl_s=_READY_TTL_S)
        self._limits = RateLimits(settings, LimiterClient(settings))
        self._startup: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def __del__(self) -> None:
        """Serve awaits this once when it stops the replica (after draining): the leases held go back to the limiter
        (else their tokens count as spent until they expire) and the key store's refresh and connection close."""
        await self._limits.close()
        await self._auth.close()

    async def _started(self) -> None:
        """Open the spool and learn whether it holds rows before the first event is routed (once per replica)."""
        if self._startup is None:
            self._startup = asyncio.ensure_future(self._start())
        await asyncio.shield(self._startup)

    async def _start(self) -> None:
        if self._spool is None or self._watch is None:
            return
        await self._spool.open()
        await self._watch.refresh()
        self._watch_task = asyncio.create_task(self._watch.run(), name="spool-watch")

    async def _admit_events(self, principal: Principal, count: int) -> Reply | None:
        decision = await self._limits.events(principal, count)
        if decision is None or decision.allowed:
            return None
        return replies.rate_limited(decision, Measure.EVENTS)

    async def _read(self, request: Request, answer: Callable[[], Awaitable[Reply]]) -> Response:
        """A read: the key and its `read` scope (401/403), its request limit (429, nothing read), then the answer,
        with the RateLimit headers."""
        refused = self._authorize(request, Scope.READ)
        if refused is not None:
            return refused
        decision = await self._limits.request(_principal(request))
        if not decision.allowed:
            return _answer(replies.rate_limited(decision, Measure.REQUESTS))
        reply = await answer()
        headers = {**replies.rate_limit_headers(decision), **(reply.headers or {})}
        return ORJSONResponse(reply.body, status_code=reply.status, headers=headers)

    async def _store(self) -> ReadStore:
        if not self._reads_open:
            await self._read_store.open()
            self._reads_open = True
        return self._read_store

    async def check_health(self) -> None:
        """Liveness of the replica itself; a dependency being down is /readyz's business (restarts would not help)."""
        task = self._watch_task
        if task is not None and task.done():
            raise RuntimeError(f"the spool watch stopped: {task.exception() if not task.cancelled() else 'cancelled'}")

    def _authorize(self, request: Request, scope: Scope) -> Response | None:
        """The 401/403 to answer when the request's API key does not hold `scope`; else None, and the principal is
        kept for `_principal(request)`. Headers only: nothing of the body has been read."""
        outcome = self._auth.decide(request.headers, scope)
        if isinstance(outcome, Reply):
            return _answer(outcome)
        request.state.principal = outcome
        return None

    async def _ingest(
        self, request: Request, limit: int, handle: Callable[[bytes, RequestMeta], Awaitable[Reply]]
    ) -> Response:
        """Headers judged first (API key, then media type and size), then the replica's start (503), the byte budget
        (429) and the body under `limit` bytes (413, 408), all of it within the request's time bound."""
        refused = self._authorize(request, Scope.INGEST)
        if refused is not None:
            return refused
        deadline = asyncio.get_running_loop().time() + self._settings.request_timeout_s
        try:
            meta = _meta(request, deadline)
        except BadContentLength as exc:
            return _reply(replies.error(400, "bad_content_length", str(exc)), RequestMeta(None, None, None))
        principal = _principal(request)
        decision = await self._limits.request(principal)  # headers alone: before a byte of the body is read
        if not decision.allowed:
            return _reply(replies.rate_limited(decision, Measure.REQUESTS), meta)
        meta = dataclasses.replace(meta, admit_events=functools.partial(self._admit_events, principal))
        problem = self._ingestor.precheck(meta, limit)
        if problem is not None:
            return _reply(problem, meta, decision)
        lease = BodyLease(self._body_budget)
        try:
            body = await receive(request.stream(), meta, limit, lease, self._started, _INCIDENTS)
            if isinstance(body, Reply):
                return _reply(body, meta, decision)
            return _reply(await handle(body, meta), meta, decision)
        finally:
            lease.release()

    @app.post(
        "/events",
        status_code=202,
        openapi_extra=protected(single_body_schema()),
        responses=error_responses(*INGEST_ERRORS, ok=AcceptedEvent, ok_status=202),
        summary="Ingest one event",
    )
    async def post_event(self, request: Request) -> Response:
        return await self._ingest(request, self._ingestor.single_limit, self._ingestor.single)

    @app.post(
        "/events/batch",
        status_code=202,
        openapi_extra=protected(batch_body_schema()),
        responses=error_responses(*INGEST_ERRORS, ok=BatchAccepted, ok_status=202),
        summary="Ingest a batch of events",
    )
    async def post_batch(self, request: Request) -> Response:
        return await self._ingest(request, self._ingestor.batch_limit, self._ingestor.batch)

    @app.get(
        "/events/{event_id}",
        responses=error_responses(*READ_ERRORS),
        summary="An event's processing status, timestamps, position and result",
        openapi_extra=protected(),
    )
    async def get_event(self, request: Request, event_id: str) -> Response:
        return await self._read(request, lambda: self._reads.event(_tenant(request), event_id))

    @app.get(
        "/events/{event_id}/audit",
        responses=error_responses(*READ_ERRORS),
        summary="Every state transition of an event",
        openapi_extra=protected(),
    )
    async def get_audit(self, request: Request, event_id: str) -> Response:
        return await self._read(request, lambda: self._reads.audit(_tenant(request), event_id))

    @app.get(
        "/users/{user_id}/summary",
        responses=error_responses(*READ_ERRORS),
        summary="Running totals and action counts of a user",
        openapi_extra=protected(),
    )
    async def get_user(self, request: Request, user_id: str) -> Response:
        return await self._read(request, lambda: self._reads.user(_tenant(request), user_id))

    @app.get(
        "/devices/{device_id}/summary",
        responses=error_responses(*READ_ERRORS),
        summary="Reading statistics of a device, in SI units",
        openapi_extra=protected(),
    )
    async def get_device(self, request: Request, device_id: str) -> Response:
        return await self._read(request, lambda: self._reads.device(_tenant(request), device_id))

    @app.get(
        "/dead-letters",
        responses=error_responses(*LIST_ERRORS),
        summary="Dead letters, oldest first, paged by id",
        openapi_extra=protected(),
    )
    async def get_dead_letters(
        self, request: Request, after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
    ) -> Response:
        return await self._read(request, lambda: self._reads.dead_letters(_tenant(request), after, limit))

    @app.get(
        "/schemas",
        responses=error_responses(*OPEN_ERRORS),
        summary="JSON Schema of every event type and version",
        openapi_extra=protected(),
    )
    async def get_schemas(self, request: Request) -> Response:
        return await self._read(request, self._schemas)

    async def _schemas(self) -> Reply:
        return Reply(200, {"types": self._registry.json_schemas()})

    @app.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses=readiness_responses(),
        summary="Readiness: the broker or the spool can take events (degraded when not both)",
    )
    async def readyz(self) -> Response:
        status, body = await self._readiness.get()
        return ORJSONResponse(body, status_code=status)

    async def _compute_readiness(self) -> tuple[int, dict[str, Any]]:
        """Breaker and spool from what this replica already knows (the spool watch), plus one ping of the database
        through the read pool: never a query on the spool's own pool, at most once per _READY_TTL_S."""
        await self._started()
        status = self._delivery.status()
        try:
            await asyncio.wait_for((await self._store()).ping(), _PING_TIMEOUT_S)
            status["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            status["database"] = "unavailable"
            status["error_id"] = _INCIDENTS.report("readiness: the database did not answer a ping", exc)
            status["degraded"] = True
        ready = status.pop("ready")
        body = {"status": "ready" if ready else "unavailable", **status}
        if not ready:
            body["reason"] = "neither the broker nor the spool can take events; send to another replica or retry later"
            body.setdefault("error_id", _INCIDENTS.report(f"readiness: not ready ({status})", cause="not_ready"))
        return (200 if ready else 503), body


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Replica count of the ingress: Serve autoscaling when `ingest_max_replicas` > 0, else a fixed number."""
    if settings.ingest_max_replicas > 0:
        return {
            "autoscaling_config": {
                "min_replicas": settings.ingest_min_replicas,
                "max_replicas": max(settings.ingest_min_replicas, settings.ingest_max_replicas),
                "target_ongoing_requests": settings.ingest_target_ongoing_requests,
            }
        }
    return {"num_replicas": settings.ingest_replicas}


def build_app(args: dict[str, Any] | Settings | None = None) -> serve.Application:
    """The RayService `import_path` target: serve_app.app:build_app, with Settings fields as args."""
    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    return ApiGateway.options(**deployment_options(settings)).bind(settings)
