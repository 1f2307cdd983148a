"""The gRPC runtime records every call's duration and count by method and status code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from hutch.core import errors
from hutch.core.config import GrpcSettings
from hutch.core.grpc_runtime import serve

SERVICE = "test.v1.Echo"


@pytest.fixture(scope="module")
def reader() -> Iterator[InMemoryMetricReader]:
    """An in-process reader on the global meter provider, which a process may set only once."""
    if isinstance(metrics.get_meter_provider(), MeterProvider):
        pytest.skip("another test already installed this process's meter provider")
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    yield reader


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, int], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        attributes = point.attributes or {}
                        if attributes.get("rpc.service") == SERVICE:
                            found[(str(attributes["rpc.method"]), int(attributes["rpc.grpc.status_code"]))] = point
    return found


async def test_calls_are_timed_and_counted_by_method_and_status(reader: InMemoryMetricReader) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def missing(request: bytes, context: Any) -> bytes:
        raise errors.NotFound("nothing here")

    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
        },
    )

    def add(servicer: Any, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handlers,))

    server = await serve(GrpcSettings(host="127.0.0.1", port=0), [(add, None, SERVICE)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for _ in range(3):
                assert await channel.unary_unary(f"/{SERVICE}/Echo")(b"hi") == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(f"/{SERVICE}/Missing")(b"")
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop()

    ok, not_found = grpc.StatusCode.OK.value[0], grpc.StatusCode.NOT_FOUND.value[0]
    durations = _points(reader, "rpc.server.duration")
    assert durations[("Echo", ok)].count == 3
    assert durations[("Missing", not_found)].count == 1
    assert durations[("Echo", ok)].sum > 0
    requests = _points(reader, "rpc.server.requests")
    assert requests[("Echo", ok)].value == 3
    assert requests[("Missing", not_found)].value == 1
