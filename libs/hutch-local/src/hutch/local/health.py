"""Health probes: the standard gRPC health check for services, protocol checks for servers."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hutch.local.ports import split_host_port
from hutch.local.servers.nats import nats_ready
from hutch.local.servers.postgres import postgres_answers
from hutch.local.servers.s3 import s3_answers
from hutch.local.state import ComponentState, StackState


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    """Whether grpc.health.v1 Check("") at `address` answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def component_healthy(state: StackState, component: ComponentState) -> bool:
    """Whether `component` of the stack answers its protocol's real requests."""
    if component.kind == "service":
        return grpc_serving(component.address)
    if component.name == "nats":
        host, port = split_host_port(component.address)
        return nats_ready(host, port)
    if component.name == "postgres":
        return postgres_answers(state.postgres_dsn)
    if component.name == "s3":
        return s3_answers(state.s3_endpoint, state.s3_access_key, state.s3_secret_key)
    raise ValueError(f"no health probe for {component.name!r}")
