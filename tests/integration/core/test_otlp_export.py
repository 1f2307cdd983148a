"""Spans and metrics leave a process over OTLP/gRPC to a collector: what compose.yaml and the
Kubernetes manifests rely on. The collector here is a real gRPC server speaking the OTLP trace and
metrics services (their official protobuf definitions); the process is a service's telemetry set up
with exporter "otlp", exactly as HUTCH_TELEMETRY__* configures it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

pytestmark = pytest.mark.integration

# A service's start-up and one traced, metered piece of work; the providers flush on exit.
PROGRAM = """
from hutch.core import telemetry
from hutch.core.config import TelemetrySettings
settings = TelemetrySettings(exporter="otlp", otlp_endpoint="{endpoint}", metrics_interval_s=60)
with telemetry.tracing(settings, "scheduler", "eu-west"):
    with telemetry.tracer("probe").start_as_current_span("place sandbox") as span:
        span.set_attribute("hutch.sandbox", "sb-otlpprobe01")
    telemetry.meter("probe").create_counter("hutch.probe.placements").add(3)
"""


@dataclass
class Collector:
    spans: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector.spans.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._collector.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    received = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(received), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield received, port
    finally:
        await server.stop(None)


async def test_spans_and_metrics_reach_an_otlp_collector(collector: tuple[Collector, int]) -> None:
    received, port = collector
    program = PROGRAM.format(endpoint=f"http://127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()

    spans = [
        (resource.resource, span)
        for request in received.spans
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    [(resource, span)] = spans
    assert span.name == "place sandbox"
    assert {a.key: a.value.string_value for a in span.attributes} == {"hutch.sandbox": "sb-otlpprobe01"}
    labels = {a.key: a.value.string_value for a in resource.attributes}
    assert (labels["service.name"], labels["hutch.region"]) == ("scheduler", "eu-west")
    points = [
        point.as_int
        for request in received.metrics
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "hutch.probe.placements"
        for point in metric.sum.data_points
    ]
    assert points == [3]
