"""The JetStream bus: streams declared in one place, publishing envelopes, durable pull consumers.

Streams (per region, created idempotently by every service at start):

    SANDBOX_<REGION>    hutch.<region>.sandbox.>      lifecycle events; kept 7 days
    NODECMD_<REGION>    hutch.<region>.node.*.cmd     work queue: one durable consumer per node
    USAGE_<REGION>      hutch.<region>.usage.>        usage reports for the billing ledger; kept 7 days
    EGRESS_<REGION>     hutch.<region>.egress.>       egress traffic per destination and audit; kept 7 days
    KV nodes_<region>   one key per node              the latest heartbeat of each node

A consumer hands each decoded envelope to its handler and then acks it. A handler that raises
`Unavailable` gets the message redelivered after a delay (nak); an undecodable message is
terminated (term) so it never blocks the stream; any other exception is logged and redelivered
until `max_deliver` is reached.

Metrics, by durable consumer: `hutch.bus.messages.handled` and `hutch.bus.messages.failed` (with
the reason: `unavailable`, `error` or `undecodable`), and `hutch.bus.consumer.pending`, the messages
not yet delivered to the consumer as JetStream reported with the last message fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation

from hutch.core import errors, events, telemetry
from hutch.core.config import NatsSettings

log = logging.getLogger(__name__)

EventHandler = Callable[[events.Envelope[Message]], Awaitable[None]]
# Handles many events at once (e.g. in one database transaction); see `Bus.consume_batches`.
BatchHandler = Callable[[list[events.Envelope[Message]]], Awaitable[None]]


_meter = telemetry.meter("hutch.bus")
_handled = _meter.create_counter("hutch.bus.messages.handled", unit="{message}", description="Events handled and acked")
_failed = _meter.create_counter(
    "hutch.bus.messages.failed", unit="{message}", description="Events nak'd for redelivery or terminated"
)
# (stream, durable) -> num_pending of the last message this process fetched for it.
_pending: dict[tuple[str, str], int] = {}


def _observe_pending(options: CallbackOptions) -> list[Observation]:
    return [
        Observation(count, {"hutch.stream": stream, "hutch.consumer": durable})
        for (stream, durable), count in list(_pending.items())
    ]


_meter.create_observable_gauge(
    "hutch.bus.consumer.pending",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages in the stream not yet delivered to the durable consumer (its lag)",
)


def _note_fetched(spec: ConsumerSpec, msgs: list[Msg]) -> None:
    if msgs:
        with contextlib.suppress(Exception):  # a message without JetStream metadata
            _pending[(spec.stream.name, spec.durable)] = msgs[-1].metadata.num_pending


def _count(spec: ConsumerSpec, kind: str, outcome: str, n: int = 1) -> None:
    attributes = {"hutch.consumer": spec.durable, "hutch.event": kind}
    if outcome == "handled":
        _handled.add(n, attributes)
    else:
        _failed.add(n, {**attributes, "hutch.reason": outcome})


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: js_api.RetentionPolicy = js_api.RetentionPolicy.LIMITS
    max_age_s: float = 7 * 24 * 3600
    # JetStream drops a second message with the same Nats-Msg-Id within this window.
    duplicate_window_s: float = 600


def sandbox_stream(region: str) -> StreamSpec:
    return StreamSpec(f"SANDBOX_{region.upper().replace('-', '_')}", (f"hutch.{region}.sandbox.>",))


def node_command_stream(region: str) -> StreamSpec:
    return StreamSpec(
        f"NODECMD_{region.upper().replace('-', '_')}",
        (f"hutch.{region}.node.*.cmd",),
        retention=js_api.RetentionPolicy.WORK_QUEUE,
    )


def usage_stream(region: str) -> StreamSpec:
    return StreamSpec(f"USAGE_{region.upper().replace('-', '_')}", (f"hutch.{region}.usage.>",))


def egress_stream(region: str) -> StreamSpec:
    return StreamSpec(f"EGRESS_{region.upper().replace('-', '_')}", (f"hutch.{region}.egress.>",))


def streams(region: str) -> list[StreamSpec]:
    """Every stream a region uses: the one place they are declared."""
    return [sandbox_stream(region), node_command_stream(region), usage_stream(region), egress_stream(region)]


def nodes_bucket(region: str) -> str:
    return f"nodes_{region.replace('-', '_')}"


def fenced_bucket(region: str) -> str:
    """Nodes the scheduler declared lost, one key per node (see `hutch.core.nodes.Fence`)."""
    return f"fenced_{region.replace('-', '_')}"


class _FetchTrouble:
    """Failed fetches of one consumer: waits longer after each (0.5 s doubling up to 5 s) and logs
    the first, one line a minute while they go on, and the recovery, so that a stream that is away
    for long (another region's, during its outage) neither spins nor floods the log."""

    FIRST_WAIT_S = 0.5
    LONGEST_WAIT_S = 5.0
    REPEAT_LOG_S = 60.0

    def __init__(self, durable: str) -> None:
        self._durable = durable
        self._failures = 0
        self._logged_at = 0.0

    async def failed(self, exc: BaseException) -> None:
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1 or now - self._logged_at >= self.REPEAT_LOG_S:
            self._logged_at = now
            log.warning("fetch on %s failed (%d in a row): %r", self._durable, self._failures, exc)
        await asyncio.sleep(min(self.LONGEST_WAIT_S, self.FIRST_WAIT_S * 2 ** (self._failures - 1)))

    def recovered(self) -> None:
        if self._failures:
            log.info("fetch on %s works again after %d failures", self._durable, self._failures)
            self._failures = 0


@dataclass(frozen=True)
class ConsumerSpec:
    stream: StreamSpec
    durable: str
    filter_subjects: tuple[str, ...]
    # How many messages are handled at once; 1 keeps them strictly in stream order.
    max_in_flight: int = 1
    max_deliver: int = 20
    ack_wait_s: float = 60
    nak_delay_s: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


class Bus:
    """A connection to NATS with JetStream; use `Bus.connect` as an async context manager."""

    def __init__(self, nc: NatsClient, region: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.region = region
        self._tracer = telemetry.tracer("hutch.bus")

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: NatsSettings, region: str, name: str) -> Any:
        try:
            nc = await nats.connect(
                settings.url,
                name=name,
                connect_timeout=settings.connect_timeout_s,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
            )
        except Exception as exc:
            raise errors.Unavailable(f"cannot connect to NATS at {settings.url}: {exc}") from exc
        bus = cls(nc, region)
        try:
            await bus.ensure_streams()
            yield bus
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()

    async def ensure_streams(self) -> None:
        for spec in streams(self.region):
            config = js_api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=spec.retention,
                max_age=spec.max_age_s,
                duplicate_window=spec.duplicate_window_s,
                storage=js_api.StorageType.FILE,
            )
            try:
                await self.js.add_stream(config)
            except BadRequestError:
                await self.js.update_stream(config)

    async def kv(self, bucket: str) -> KeyValue:
        try:
            return await self.js.key_value(bucket)
        except NotFoundError:
            return await self.js.create_key_value(bucket=bucket, history=1)

    async def publish(self, subject: str, envelope: events.Envelope[Any], timeout_s: float = 5.0) -> None:
        """Publishes one event and waits for JetStream to store it; retries within `timeout_s`."""
        await self.publish_raw(subject, envelope.body(), envelope.headers(), timeout_s)

    async def publish_raw(self, subject: str, body: bytes, headers: dict[str, str], timeout_s: float = 5.0) -> None:
        headers = dict(headers)
        if "traceparent" not in headers:
            telemetry.inject(headers)
        deadline = asyncio.get_running_loop().time() + timeout_s
        delay = 0.05
        while True:
            try:
                await self.js.publish(subject, body, headers=headers, timeout=max(0.5, timeout_s / 4))
                return
            except Exception as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise errors.Unavailable(f"cannot publish to {subject}: {exc!r}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _subscribe(self, spec: ConsumerSpec, max_ack_pending: int) -> JetStreamContext.PullSubscription:
        """Creates (or updates) the durable consumer and binds a pull subscription to it."""
        config = js_api.ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=max_ack_pending,
            **spec.extra,
        )
        if len(spec.filter_subjects) == 1:
            config.filter_subject = spec.filter_subjects[0]
        else:
            config.filter_subjects = list(spec.filter_subjects)
        await self.js.add_consumer(spec.stream.name, config)
        return await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream.name)

    async def consume(self, spec: ConsumerSpec, handler: EventHandler, stop: asyncio.Event) -> None:
        """Runs a durable pull consumer until `stop` is set."""
        sub = await self._subscribe(spec, max(64, spec.max_in_flight * 4))
        trouble = _FetchTrouble(spec.durable)
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(spec.max_in_flight)
        try:
            while not stop.is_set():
                free = max(1, min(16, spec.max_in_flight - len(in_flight)))
                try:
                    msgs = await sub.fetch(free, timeout=1.0)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception as exc:  # connection trouble: the client reconnects by itself
                    await trouble.failed(exc)
                    continue
                trouble.recovered()
                _note_fetched(spec, msgs)
                for msg in msgs:
                    await slots.acquire()
                    task = asyncio.create_task(self._handle(spec, msg, handler))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    task.add_done_callback(lambda _: slots.release())
        finally:
            if in_flight:
                await asyncio.wait(in_flight, timeout=spec.ack_wait_s)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, spec: ConsumerSpec, msg: Msg, handler: EventHandler) -> None:
        headers = msg.headers or {}
        try:
            envelope = events.decode(msg.data, headers)
        except events.UndecodableEvent as exc:
            log.error("terminating undecodable message on %s: %s", msg.subject, exc)
            _count(spec, headers.get(events.EVENT_TYPE, ""), "undecodable")
            await msg.term()
            return
        with (
            telemetry.attached(headers),
            self._tracer.start_as_current_span(
                f"handle {envelope.kind.name}",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "hutch.event_id": envelope.id,
                    "hutch.consumer": spec.durable,
                    "hutch.sandbox": envelope.sandbox,
                },
            ),
        ):
            try:
                await handler(envelope)
            except errors.Unavailable as exc:
                log.warning("%s: %s; redelivering in %.1fs", spec.durable, exc, spec.nak_delay_s)
                _count(spec, envelope.kind.name, "unavailable")
                await msg.nak(delay=spec.nak_delay_s)
                return
            except Exception:
                log.exception("%s failed to handle %s %s", spec.durable, envelope.kind.name, envelope.id)
                _count(spec, envelope.kind.name, "error")
                await msg.nak(delay=spec.nak_delay_s)
                return
        await msg.ack()
        _count(spec, envelope.kind.name, "handled")

    async def consume_batches(
        self, spec: ConsumerSpec, handler: BatchHandler, stop: asyncio.Event, batch_size: int = 256
    ) -> None:
        """Runs a durable pull consumer that hands its handler up to `batch_size` events at a time.

        For handlers whose work is far cheaper per event in bulk (one database transaction for a
        whole batch). The batch is acked after the handler returns and nak'd as a whole when it
        raises, so the handler must be idempotent per event; undecodable messages are terminated on
        their own, as in `consume`.
        """
        sub = await self._subscribe(spec, max(1024, batch_size * 4))
        trouble = _FetchTrouble(spec.durable)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch_size, timeout=1.0)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception as exc:  # connection trouble: the client reconnects by itself
                    await trouble.failed(exc)
                    continue
                trouble.recovered()
                _note_fetched(spec, msgs)
                await self._handle_batch(spec, msgs, handler)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle_batch(self, spec: ConsumerSpec, msgs: list[Msg], handler: BatchHandler) -> None:
        decoded: list[tuple[Msg, events.Envelope[Message]]] = []
        for msg in msgs:
            try:
                decoded.append((msg, events.decode(msg.data, msg.headers or {})))
            except events.UndecodableEvent as exc:
                log.error("terminating undecodable message on %s: %s", msg.subject, exc)
                _count(spec, (msg.headers or {}).get(events.EVENT_TYPE, ""), "undecodable")
                await msg.term()
        if not decoded:
            return
        # The batch's span continues the publishers' trace when they all share one (a batch of one,
        # typically) and links to each of them otherwise.
        parents = {(msg.headers or {}).get("traceparent", "") for msg, _ in decoded}
        carrier = (decoded[0][0].headers or {}) if len(parents) == 1 else {}
        links = [] if carrier else _links(msg for msg, _ in decoded)
        with (
            telemetry.attached(carrier),
            self._tracer.start_as_current_span(
                f"handle {len(decoded)} events",
                kind=trace.SpanKind.CONSUMER,
                attributes={"hutch.consumer": spec.durable, "hutch.batch_size": len(decoded)},
                links=links,
            ),
        ):
            try:
                await handler([envelope for _, envelope in decoded])
            except errors.Unavailable as exc:
                log.warning(
                    "%s: %s; redelivering %d events in %.1fs", spec.durable, exc, len(decoded), spec.nak_delay_s
                )
                _count_batch(spec, decoded, "unavailable")
                await asyncio.gather(*(msg.nak(delay=spec.nak_delay_s) for msg, _ in decoded))
                return
            except Exception:
                log.exception("%s failed to handle a batch of %d events", spec.durable, len(decoded))
                _count_batch(spec, decoded, "error")
                await asyncio.gather(*(msg.nak(delay=spec.nak_delay_s) for msg, _ in decoded))
                return
        await asyncio.gather(*(msg.ack() for msg, _ in decoded))
        _count_batch(spec, decoded, "handled")


def _links(msgs: Iterable[Msg]) -> list[trace.Link]:
    links = []
    for msg in msgs:
        context = trace.get_current_span(propagate.extract(msg.headers or {})).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    return links


def _count_batch(spec: ConsumerSpec, decoded: list[tuple[Msg, events.Envelope[Message]]], outcome: str) -> None:
    for kind, n in Counter(envelope.kind.name for _, envelope in decoded).items():
        _count(spec, kind, outcome, n)
