"""A consumer whose fetches keep failing waits longer each time and logs a line a minute, not a flood."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hutch.core import bus
from hutch.core.bus import _FetchTrouble


def test_waits_double_up_to_a_ceiling_and_the_log_stays_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(bus.asyncio, "sleep", no_sleep)
    trouble = _FetchTrouble("billing-meter-eu-west")

    async def fail(times: int) -> None:
        for _ in range(times):
            await trouble.failed(ConnectionError("away"))

    with caplog.at_level(logging.INFO, logger=bus.log.name):
        asyncio.run(fail(8))
        trouble.recovered()
        asyncio.run(fail(1))
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.5]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert "(1 in a row)" in messages[0]
    assert "works again after 8 failures" in messages[1]
    assert "(1 in a row)" in messages[2]
