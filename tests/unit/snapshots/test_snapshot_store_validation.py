"""Request validation: wrong input is refused with a message that says what to change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hutch.core import errors
from hutch_snapshot_store.domain import validation
from hutch_snapshot_store.domain.model import Kind, Purpose

GOOD = "ab" * 32


def test_begin_defaults_and_checks() -> None:
    params = validation.begin("tn-1", "sb-1", "my-snap", 0, 0, "", b"{}", {"team": "a"})
    assert (params.kind, params.purpose) == (Kind.FILESYSTEM, Purpose.USER)
    for args, message in [
        (("", "", "", 0, 0, "", b"", {}), "tenant_id is required"),
        (("tn/1", "", "", 0, 0, "", b"", {}), "tenant_id"),
        (("tn-1", "", "Bad Name", 0, 0, "", b"", {}), "snapshot name"),
        (("tn-1", "", "", 9, 0, "", b"", {}), "kind"),
        (("tn-1", "", "", 0, 9, "", b"", {}), "purpose"),
        (("tn-1", "", "", 0, 0, "snap-x", b"", {}), "snapshot id"),
        (("tn-1", "", "", 0, 0, "", bytes(2_000_000), {}), "spec"),
        (("tn-1", "", "", 0, 0, "", b"", {"bad key!": "v"}), "label key"),
    ]:
        with pytest.raises(errors.InvalidArgument, match=message):
            validation.begin(*args)


def test_hashes_and_chunks() -> None:
    assert validation.hashes([GOOD], 10) == [GOOD]
    with pytest.raises(errors.InvalidArgument, match="at least one"):
        validation.hashes([], 10)
    with pytest.raises(errors.InvalidArgument, match="split the batch"):
        validation.hashes([GOOD] * 11, 10)
    with pytest.raises(errors.InvalidArgument, match="64 lowercase hex"):
        validation.hashes([GOOD.upper()], 10)
    with pytest.raises(errors.InvalidArgument, match="outside"):
        validation.incoming_chunk(GOOD, 17 * 1024 * 1024, b"x")
    with pytest.raises(errors.InvalidArgument, match="no data"):
        validation.incoming_chunk(GOOD, 10, b"")


def test_streams() -> None:
    (stream,) = validation.streams([("rootfs.tar", [(GOOD, 10), (GOOD, 5)], 15)])
    assert stream.size == 15
    for value, message in [
        ([("a", [(GOOD, 10)], 11)], "add up to 10"),
        ([("a", [], 0), ("a", [], 0)], "two streams"),
        ([("../x", [], 0)], "stream name"),
        ([("a", [(GOOD, 0)], 0)], "outside"),
    ]:
        with pytest.raises(errors.InvalidArgument, match=message):
            validation.streams(value)  # type: ignore[arg-type]


def test_ids_names_pages() -> None:
    snapshot = validation.new_snapshot_id()
    assert validation.is_snapshot_id(snapshot) and len(snapshot) == 25
    assert validation.id_or_name(snapshot) == snapshot
    assert validation.id_or_name("nightly") == "nightly"
    with pytest.raises(errors.InvalidArgument):
        validation.id_or_name("")
    assert validation.page_size(0, 1000) == 100
    with pytest.raises(errors.InvalidArgument, match="maximum"):
        validation.page_size(1001, 1000)
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert validation.decode_page_token(validation.encode_page_token(moment, snapshot)) == (moment, snapshot)
    assert validation.decode_page_token("") is None
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        validation.decode_page_token("!!!")
