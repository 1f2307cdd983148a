"""The JetStream bus against a real NATS server: dedup by event id, ack/nak/term, durable resume."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hutch.core import errors, events
from hutch.core.bus import Bus, ConsumerSpec, sandbox_stream
from hutch.core.config import NatsSettings
from hutch.events.v1 import sandbox_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Bus]:
    region = "t" + uuid.uuid4().hex[:10]
    async with Bus.connect(NatsSettings(url=nats_server.url), region, "test") as connected:
        yield connected


def started(sandbox: str, event_id: str | None = None) -> events.Envelope[sandbox_pb2.SandboxStarted]:
    payload = sandbox_pb2.SandboxStarted(sandbox_id=sandbox, node_id="n1")
    kwargs = {"id": event_id} if event_id else {}
    return events.Envelope(kind=events.SANDBOX_STARTED, payload=payload, sandbox=sandbox, **kwargs)


def spec(bus: Bus, durable: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=sandbox_stream(bus.region),
        durable=durable,
        filter_subjects=(events.SANDBOX_STARTED.subject(bus.region),),
        nak_delay_s=0.1,
        max_deliver=3,
    )


async def collect(bus: Bus, consumer: ConsumerSpec, handler: Any, until: Any, timeout: float = 10) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(consumer, handler, stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until():
            assert asyncio.get_running_loop().time() < deadline, "consumer did not catch up in time"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_same_event_id_is_stored_once(bus: Bus) -> None:
    subject = events.SANDBOX_STARTED.subject(bus.region)
    for _ in range(3):
        await bus.publish(subject, started("sb-1", event_id="fixed-id"))
    await bus.publish(subject, started("sb-2"))
    info = await bus.js.stream_info(sandbox_stream(bus.region).name)
    assert info.state.messages == 2


async def test_handler_sees_decoded_envelopes_in_order(bus: Bus) -> None:
    subject = events.SANDBOX_STARTED.subject(bus.region)
    for i in range(5):
        await bus.publish(subject, started(f"sb-{i}"))
    seen: list[str] = []

    async def handler(envelope: events.Envelope[Any]) -> None:
        seen.append(envelope.payload.sandbox_id)

    await collect(bus, spec(bus, "order"), handler, lambda: len(seen) == 5)
    assert seen == [f"sb-{i}" for i in range(5)]


async def test_unavailable_is_redelivered_and_poison_is_terminated(bus: Bus) -> None:
    subject = events.SANDBOX_STARTED.subject(bus.region)
    await bus.publish(subject, started("sb-retry"))
    await bus.publish_raw(subject, b"\xff\xff", {events.EVENT_TYPE: "sandbox.started", events.MSG_ID: "poison"})
    attempts: list[str] = []

    async def handler(envelope: events.Envelope[Any]) -> None:
        attempts.append(envelope.payload.sandbox_id)
        if len(attempts) < 3:
            raise errors.Unavailable("database away")

    await collect(bus, spec(bus, "retry"), handler, lambda: len(attempts) >= 3)
    assert attempts == ["sb-retry"] * 3
    info = await bus.js.consumer_info(sandbox_stream(bus.region).name, "retry")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_durable_consumer_resumes_where_it_stopped(bus: Bus) -> None:
    subject = events.SANDBOX_STARTED.subject(bus.region)
    await bus.publish(subject, started("sb-a"))
    seen: list[str] = []

    async def handler(envelope: events.Envelope[Any]) -> None:
        seen.append(envelope.payload.sandbox_id)

    await collect(bus, spec(bus, "resume"), handler, lambda: len(seen) == 1)
    await bus.publish(subject, started("sb-b"))
    await collect(bus, spec(bus, "resume"), handler, lambda: len(seen) == 2)
    assert seen == ["sb-a", "sb-b"]


async def test_trace_context_travels_in_headers(bus: Bus) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    subject = events.SANDBOX_STARTED.subject(bus.region)
    with tracer.start_as_current_span("publisher") as span:
        trace_id = span.get_span_context().trace_id
        await bus.publish(subject, started("sb-t"))
    got: list[int] = []

    async def handler(envelope: events.Envelope[Any]) -> None:
        got.append(trace.get_current_span().get_span_context().trace_id)

    await collect(bus, spec(bus, "trace"), handler, lambda: len(got) == 1)
    assert got == [trace_id]
