"""OpenTelemetry setup (traces and metrics) and trace-context propagation.

Trace context rides in headers, never in payloads: W3C `traceparent`/`tracestate` go into gRPC
metadata on calls and into NATS headers on events, so one trace follows a request from the SDK
through the gateway, NATS, the scheduler and the node-agent.

Metrics go where the spans go: over OTLP to the same endpoint, or, with the file exporter, one JSON
line per export (`MetricsData.to_json`) to `metrics.jsonl` next to the traces file, every
`metrics_interval_s`. Instruments are created on the global meter (`meter(name)`), so code may create
them at import time, before the service installs its provider.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from hutch.core.config import TelemetrySettings

log = logging.getLogger(__name__)


def _json_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def metrics_file(settings: TelemetrySettings) -> Path:
    """Where the file exporter writes metrics: `metrics_file_path`, or `metrics.jsonl` beside the spans."""
    if settings.metrics_file_path:
        return Path(settings.metrics_file_path)
    return Path(settings.file_path).with_name("metrics.jsonl")


class JsonLinesMetricExporter(MetricExporter):
    """Appends each export as one JSON line; one `write` per line, so processes sharing the file
    never interleave their lines."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        line = str(metrics_data.to_json(indent=None)) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:
            log.warning("cannot write metrics", exc_info=True)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _metric_exporter(settings: TelemetrySettings) -> MetricExporter:
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=settings.otlp_endpoint, insecure=True)
    if settings.exporter == "file":
        return JsonLinesMetricExporter(metrics_file(settings))
    return ConsoleMetricExporter(formatter=lambda data: str(data.to_json(indent=None)) + "\n")


@contextlib.contextmanager
def tracing(settings: TelemetrySettings, service_name: str, region: str) -> Iterator[None]:
    """Installs a tracer provider and a meter provider for this process; flushes and shuts them down
    on exit."""
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
    reader = PeriodicExportingMetricReader(
        _metric_exporter(settings), export_interval_millis=settings.metrics_interval_s * 1000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    try:
        yield
    finally:
        meter_provider.shutdown()
        provider.shutdown()
        if out is not None:
            out.close()


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


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
