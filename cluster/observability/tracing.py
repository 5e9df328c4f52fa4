"""OpenTelemetry tracing for one eventpipe process: provider, sampler, exporter (OTLP/HTTP or JSON lines), and the
W3C `traceparent` text that carries a span's context in Kafka headers and in `events.trace_context`.

Each process builds one `Tracing` at start and passes it down; it never sets the global tracer provider (tests build
several in one process) and never blocks a caller on export (a batching processor with a bounded queue; spans beyond
it are dropped, not waited for).
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

from cluster.settings import Settings

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_MB = 1024 * 1024


# -- W3C trace context -------------------------------------------------------------------------------------------------
def format_traceparent(context: SpanContext) -> str | None:
    """The W3C `traceparent` of a span context; None for an invalid one (tracing off)."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """The remote span context a `traceparent` names; None when absent or malformed (the span then starts a trace)."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    match = _TRACEPARENT.match(text.strip().lower())
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16) & 1))


def forced_parent(value: str | bytes | None) -> SpanContext | None:
    """The parent an HTTP request's `traceparent` names when its sampled flag is set (the client forces a trace,
    whatever the ratio); None for an absent, unsampled or malformed one, which is then ignored."""
    context = parse_traceparent(value)
    return context if context is not None and context.trace_flags.sampled else None


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str = TRACEPARENT) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def with_header(
    headers: Sequence[tuple[str, bytes]] | None, value: str | None, name: str = TRACEPARENT
) -> list[tuple[str, bytes]] | None:
    """The headers with `name` set to `value` (replaced if present); unchanged when value is None."""
    if value is None:
        return list(headers) if headers else None
    if not headers:
        return [(name, value.encode())]
    return [*(h for h in headers if h[0] != name), (name, value.encode())]


def remote_parent(context: SpanContext | None) -> Any:
    """An OpenTelemetry Context whose current span is the given remote one (None: start a new trace)."""
    return trace.set_span_in_context(NonRecordingSpan(context)) if context is not None else None


# -- sampling ---------------------------------------------------------------------------------------------------------
# Set by a caller on a root span it has already sampled at the tracer's ratio (IngestSpans decides the API's roots
# itself, so the unsampled ones cost no SDK work): LinkedOrRatio records it, and the span does not keep the attribute.
SAMPLED_BY_CALLER = "eventpipe.sampled_by_caller"


class LinkedOrRatio(Sampler):
    """Root sampler: a span with links (a batch commit) is sampled when any linked span is; one its caller sampled
    (SAMPLED_BY_CALLER) is; others by trace id ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if links:
            sampled = any(link.context.trace_flags.sampled for link in links)
            return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP, attributes)
        if attributes and SAMPLED_BY_CALLER in attributes:
            kept = {k: v for k, v in attributes.items() if k != SAMPLED_BY_CALLER}
            return SamplingResult(Decision.RECORD_AND_SAMPLE, kept)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedOrRatio{{{self._ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """Parent-based: a trace is started with probability `ratio` and then followed in every process it reaches."""
    return ParentBased(root=LinkedOrRatio(ratio))


# -- the local exporter -----------------------------------------------------------------------------------------------
def span_record(span: ReadableSpan, resource: Any) -> dict[str, Any]:
    """One exported span as the JSON object written per line (and read back by trace_view)."""
    ctx = span.context
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "resource": resource,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans as JSON lines to `<directory>/<service>-<pid>.jsonl`; past `max_bytes` the file is rotated once
    (to `.jsonl.1`), so a busy process keeps at most about twice that on disk."""

    def __init__(self, directory: Path, service: str, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{service}-{os.getpid()}.jsonl"
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - kept open for the process's life

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        resource = orjson.Fragment(orjson.dumps(_resource_fields(spans[0].resource)))
        data = b"".join(orjson.dumps(span_record(s, resource)) + b"\n" for s in spans)
        with self._lock:
            if self._file is None:
                return SpanExportResult.FAILURE
            self._file.write(data)
            self._file.flush()
            if self._file.tell() > self._max_bytes:
                self._file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = open(self.path, "ab")  # noqa: SIM115
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


_RESOURCE_KEYS = ("service.name", "eventpipe.service", "process.pid", "host.name")


def _resource_fields(resource: Resource) -> dict[str, Any]:
    return {key: resource.attributes[key] for key in _RESOURCE_KEYS if key in resource.attributes}


def traces_dir(settings: Settings) -> Path:
    return settings.data_dir / "traces"


def otlp_traces_url(endpoint: str) -> str:
    """EVENTPIPE_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT are base URLs; the traces signal is under /v1/traces."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


# -- the per-process tracing handle ------------------------------------------------------------------------------------
class Tracing:
    """A tracer and the provider behind it; `enabled` is False when tracing is off (spans are then invalid no-ops)."""

    def __init__(
        self, tracer: trace.Tracer, provider: TracerProvider | None = None, exporter: Any = None, ratio: float = 0.0
    ) -> None:
        self.tracer = tracer
        self.provider = provider
        self.exporter = exporter
        self.enabled = provider is not None
        self.ratio = ratio  # of new traces sampled (the root sampler's); parents decide for their children

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(trace.NoOpTracer())

    @classmethod
    def start(cls, settings: Settings, service: str, exporter: SpanExporter | None = None) -> Tracing:
        """The tracing of a process of `service`; export per settings unless an exporter is given (tests)."""
        if not settings.tracing_enabled:
            return cls.disabled()
        resource = Resource.create(
            {
                "service.name": f"eventpipe-{service}",
                "service.namespace": "eventpipe",
                "eventpipe.service": service,
                "process.pid": os.getpid(),
                "host.name": socket.gethostname(),
            }
        )
        provider = TracerProvider(
            sampler=sampler(settings.trace_sample_ratio),
            resource=resource,
            # A batch commit links to every event of its batch.
            span_limits=SpanLimits(max_links=max(128, settings.consume_batch_max)),
        )
        if exporter is None:
            exporter = _exporter(settings, service)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=16_384, schedule_delay_millis=500, max_export_batch_size=2048)
        )
        return cls(provider.get_tracer("eventpipe"), provider, exporter, settings.trace_sample_ratio)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider is not None else True

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def _exporter(settings: Settings, service: str) -> SpanExporter:
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=otlp_traces_url(settings.otlp_endpoint))
    return JsonLinesSpanExporter(traces_dir(settings), service, settings.trace_file_max_mb * _MB)
