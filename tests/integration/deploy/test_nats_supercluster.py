"""deploy/nats forms a two-region supercluster: two real nats-server processes, each one region,
started from deploy/nats/server.conf with the environment of deploy/nats/<region>.env on free
loopback ports, join through their gateways; a request crosses regions, and Hutch's per-region
streams live side by side, each in its own region's cluster, reachable from the other region.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hutch.core.bus import Bus, sandbox_stream
from hutch.core.config import NatsSettings
from hutch.testing.nats_supercluster import Region, gateways_joined, jetstream_ready, supercluster, wait_for

pytestmark = pytest.mark.integration

NATS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "nats"
REGIONS = ("eu-west", "us-east")


@pytest.fixture
async def regions(tmp_path: Path) -> AsyncIterator[dict[str, Region]]:
    with supercluster(NATS_DIR, REGIONS, tmp_path) as started:
        await wait_for("the regions did not join through their gateways", gateways_joined(REGIONS), started)
        yield started


async def test_regions_join_and_requests_cross_them(regions: dict[str, Region]) -> None:
    for region in regions.values():
        varz = region.monitor("varz")
        assert varz["cluster"]["name"] == region.name, "a region is a NATS cluster named after it"
    eu = await nats.connect(regions["eu-west"].url)
    us = await nats.connect(regions["us-east"].url)
    try:
        subject = f"hutch.us-east.test.{uuid.uuid4().hex}"

        async def answer(msg: Any) -> None:
            await msg.respond(b"from us-east")

        await us.subscribe(subject, cb=answer)
        await us.flush()
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = await eu.request(subject, b"from eu-west", timeout=1)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert reply.data == b"from us-east"
    finally:
        await eu.close()
        await us.close()


async def test_each_region_keeps_its_streams_and_takes_events_from_the_other(regions: dict[str, Region]) -> None:
    await wait_for("JetStream elected no meta leader", jetstream_ready, regions)
    async with (
        Bus.connect(NatsSettings(url=regions["eu-west"].url), "eu-west", "test-eu") as eu,
        Bus.connect(NatsSettings(url=regions["us-east"].url), "us-east", "test-us") as us,
    ):
        for bus, region in ((eu, "eu-west"), (us, "us-east")):
            info = await bus.js.stream_info(sandbox_stream(region).name)
            assert info.cluster is not None and info.cluster.name == region, f"{region}'s stream is in {info.cluster}"
        # An event for eu-west published in us-east lands in eu-west's stream.
        await us.publish_raw("hutch.eu-west.sandbox.test", b"crossed", {"Nats-Msg-Id": uuid.uuid4().hex})
        info = await eu.js.stream_info(sandbox_stream("eu-west").name)
        assert info.state.messages == 1
        message = await eu.js.get_last_msg(sandbox_stream("eu-west").name, "hutch.eu-west.sandbox.test")
        assert message.data == b"crossed"
