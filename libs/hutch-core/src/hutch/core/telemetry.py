"""OpenTelemetry setup and trace-context propagation.

Trace context rides in headers, never in payloads: W3C `traceparent`/`tracestate` go into gRPC
metadata on calls and into NATS headers on events, so one trace follows a request from the SDK
through the gateway, NATS, the scheduler and the node-agent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import IO

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from hutch.core.config import TelemetrySettings

log = logging.getLogger(__name__)


def _json_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


@contextlib.contextmanager
def tracing(settings: TelemetrySettings, service_name: str, region: str) -> Iterator[None]:
    """Installs a tracer provider for this process; flushes and shuts it down on exit."""
    if settings.exporter == "none":
        yield
        return
    resource = Resource.create({"service.name": service_name, "hutch.region": region})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    out: IO[str] | None = None
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    elif settings.exporter == "file":
        out = open(settings.file_path, "a", buffering=1)  # noqa: SIM115 - closed in finally
        exporter = ConsoleSpanExporter(out=out, formatter=_json_line)
    else:
        exporter = ConsoleSpanExporter(formatter=_json_line)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        provider.shutdown()
        if out is not None:
            out.close()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Writes the current trace context into `carrier` (NATS headers or gRPC metadata)."""
    propagate.inject(carrier)


@contextlib.contextmanager
def attached(carrier: Mapping[str, str]) -> Iterator[None]:
    """Makes the trace context found in `carrier` current for the duration of the block."""
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)
