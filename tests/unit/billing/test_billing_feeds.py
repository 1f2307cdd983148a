"""Which consumers a region's billing-meter keeps on each region's streams, and how a peer's feed retries."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from hutch_billing_meter.feeds import Backoff, consumers, durable_name, keep_trying

REGIONS = ("eu-west", "us-east", "ap-south")


def test_a_meter_reads_its_own_streams_as_billing_meter_and_a_peers_under_its_region() -> None:
    usage, sandboxes = consumers("eu-west")
    assert (usage.stream.name, usage.durable, usage.filter_subjects) == (
        "USAGE_EU_WEST",
        "billing-meter",
        ("hutch.eu-west.usage.>",),
    )
    assert (sandboxes.stream.name, sandboxes.filter_subjects) == (
        "SANDBOX_EU_WEST",
        ("hutch.eu-west.sandbox.requested",),
    )
    usage, sandboxes = consumers("eu-west", "us-east")
    assert (usage.stream.name, usage.durable, usage.filter_subjects) == (
        "USAGE_US_EAST",
        "billing-meter-eu-west",
        ("hutch.us-east.usage.>",),
    )
    assert (sandboxes.stream.name, sandboxes.durable) == ("SANDBOX_US_EAST", "billing-meter-eu-west")


def test_no_two_meters_share_a_consumer_on_any_stream() -> None:
    for source in REGIONS:
        names = [durable_name(region, source) for region in REGIONS]
        assert len(set(names)) == len(REGIONS), f"meters share a consumer on {source}'s streams: {names}"


def test_backoff_doubles_up_to_its_ceiling() -> None:
    backoff = Backoff(first_s=1, most_s=30)
    delays = list(itertools.accumulate(range(7), lambda delay, _: backoff.after(delay), initial=backoff.first_s))
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


async def test_a_feed_that_cannot_start_is_tried_again_until_it_runs() -> None:
    tries = 0

    async def consume() -> None:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ConnectionError("the region is away")

    await keep_trying("a peer's usage", consume, asyncio.Event(), Backoff(first_s=0.001, most_s=0.002))
    assert tries == 3


async def test_a_stop_ends_the_wait_between_tries(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def consume() -> None:
        stop.set()
        raise ConnectionError("the region is away")

    # A day between tries: only the stop can end the wait.
    await asyncio.wait_for(keep_trying("a peer's usage", consume, stop, Backoff(first_s=86400, most_s=86400)), 60)
    assert "a peer's usage failed (1 in a row)" in caplog.text
