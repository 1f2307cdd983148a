"""The CLI's pieces that need no server: times on the command line, the PNG writer, the chart."""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import typer

from hutch.cli import _chart
from hutch.cli._png import encode_png
from hutch.cli.usage import parse_moment

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def chunks(png: bytes) -> dict[bytes, bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = {}, 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        found[kind] = data
        offset += 12 + length
    return found


def test_the_png_encoder_writes_a_valid_image() -> None:
    pixels = bytes([255, 0, 0]) * 6
    found = chunks(encode_png(3, 2, pixels))
    assert struct.unpack(">IIBBBBB", found[b"IHDR"]) == (3, 2, 8, 2, 0, 0, 0)
    assert zlib.decompress(found[b"IDAT"]) == (b"\x00" + bytes([255, 0, 0]) * 3) * 2
    assert b"IEND" in found
    with pytest.raises(ValueError, match="bytes of pixels"):
        encode_png(3, 2, b"\x00")


def test_the_chart_draws_both_series() -> None:
    points = [_chart.Point(f"10:{m:02d}", active=m / 2, allocated=m) for m in range(1, 30)]
    found = chunks(_chart.render(points, "vcpu-seconds per minute", width=400, height=200))
    width, height = struct.unpack(">II", found[b"IHDR"][:8])
    raw = zlib.decompress(found[b"IDAT"])
    assert (width, height) == (400, 200) and len(raw) == height * (1 + width * 3)
    assert bytes(_chart.ACTIVE) in raw and bytes(_chart.ALLOCATED) in raw
    assert chunks(_chart.render([], "empty"))[b"IHDR"]


def test_times_on_the_command_line() -> None:
    assert parse_moment("now", NOW) == NOW
    assert parse_moment("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_moment("-30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_moment("7d", NOW) == NOW - timedelta(days=7)
    assert parse_moment("2026-02-01T10:00", NOW) == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-02-01T10:00Z", NOW) == datetime(2026, 2, 1, 10, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        parse_moment("yesterday-ish", NOW)
