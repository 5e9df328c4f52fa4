"""The Ray Serve application: one ingress deployment serving ingestion, the read API, schemas and health.

Clients (Kafka producer, PostgreSQL pool) are built once per replica in the constructor; routes only translate HTTP.
"""

import logging
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import ORJSONResponse, Response
from ray import serve

from cluster.adapters.kafka_config import producer_config
from cluster.adapters.kafka_producer import KafkaPublisher
from cluster.adapters.read_store import ReadStore
from cluster.settings import Settings
from pipelines.registry import default_registry
from serve_app.ingest import Ingestor, Reply, RequestMeta
from serve_app.openapi import batch_body_schema, single_body_schema

log = logging.getLogger(__name__)
app = FastAPI(
    title="eventpipe",
    version="0.1.0",
    description="Exactly-once event ingestion and processing. Events are acknowledged (202) only after the broker "
    "acknowledged them; processing status, audit trail and read models are served from PostgreSQL.",
    default_response_class=ORJSONResponse,
)


def _reply(reply: Reply) -> Response:
    return ORJSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def _meta(request: Request) -> RequestMeta:
    h = request.headers
    return RequestMeta(h.get("content-type"), h.get("idempotency-key"), h.get("x-correlation-id"))


def _not_found(what: str, key: str) -> Response:
    return ORJSONResponse({"error": "not_found", "reason": f"no {what} {key!r} (yet)"}, status_code=404)


@serve.deployment(
    name="ApiGateway",
    max_ongoing_requests=256,
    max_queued_requests=2048,
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(app)
class ApiGateway:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._registry = default_registry(settings.base_currency, settings.risk_amount_threshold)
        self._publisher = KafkaPublisher(producer_config(settings.kafka_bootstrap, settings.producer_linger_ms))
        self._ingestor = Ingestor(settings, self._registry, self._publisher)
        self._reads = ReadStore(settings.database_url.get_secret_value())
        self._reads_open = False

    async def _store(self) -> ReadStore:
        if not self._reads_open:
            await self._reads.open()
            self._reads_open = True
        return self._reads

    async def check_health(self) -> None:
        await (await self._store()).ping()

    @app.post("/events", status_code=202, openapi_extra=single_body_schema(), summary="Ingest one event")
    async def post_event(self, request: Request) -> Response:
        return _reply(await self._ingestor.single(await request.body(), _meta(request)))

    @app.post("/events/batch", status_code=202, openapi_extra=batch_body_schema(), summary="Ingest a batch of events")
    async def post_batch(self, request: Request) -> Response:
        return _reply(await self._ingestor.batch(await request.body(), _meta(request)))

    @app.get("/events/{event_id}", summary="An event's processing status, timestamps, position and result")
    async def get_event(self, event_id: str) -> Response:
        event = await (await self._store()).event(event_id)
        return ORJSONResponse(event) if event else _not_found("event", event_id)

    @app.get("/events/{event_id}/audit", summary="Every state transition of an event")
    async def get_audit(self, event_id: str) -> Response:
        rows = await (await self._store()).audit(event_id)
        return ORJSONResponse({"event_id": event_id, "transitions": rows}) if rows else _not_found("event", event_id)

    @app.get("/users/{user_id}/summary", summary="Running totals and action counts of a user")
    async def get_user(self, user_id: str) -> Response:
        summary = await (await self._store()).user_summary(user_id)
        return ORJSONResponse(summary) if summary else _not_found("user", user_id)

    @app.get("/devices/{device_id}/summary", summary="Reading statistics of a device, in SI units")
    async def get_device(self, device_id: str) -> Response:
        summary = await (await self._store()).device_summary(device_id)
        return ORJSONResponse(summary) if summary else _not_found("device", device_id)

    @app.get("/dead-letters", summary="Dead letters, oldest first, paged by id")
    async def get_dead_letters(self, after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> Response:
        return ORJSONResponse({"items": await (await self._store()).dead_letters(after, limit)})

    @app.get("/schemas", summary="JSON Schema of every event type and version")
    async def get_schemas(self) -> dict[str, Any]:
        return {"types": self._registry.json_schemas()}

    @app.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: PostgreSQL reachable")
    async def readyz(self) -> Response:
        try:
            await (await self._store()).ping()
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            return ORJSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return ORJSONResponse({"status": "ready"})


def build_app(args: dict[str, Any] | Settings | None = None) -> serve.Application:
    """The RayService `import_path` target: serve_app.app:build_app, with Settings fields as args."""
    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    deployment = ApiGateway.options(num_replicas=settings.ingest_replicas)
    return deployment.bind(settings)
