import pytest

from hutch.core import events
from hutch.events.v1 import sandbox_pb2


def test_envelope_round_trips_through_body_and_headers() -> None:
    payload = sandbox_pb2.SandboxStarted(sandbox_id="sb-x", node_id="n1")
    sent = events.Envelope(kind=events.SANDBOX_STARTED, payload=payload, tenant="tn-1", sandbox="sb-x")
    got = events.decode(sent.body(), sent.headers())
    assert got.kind is events.SANDBOX_STARTED
    assert got.payload == payload
    assert (got.id, got.tenant, got.sandbox, got.time) == (sent.id, "tn-1", "sb-x", sent.time)
    assert sent.headers()[events.MSG_ID] == sent.id


def test_unknown_type_and_garbage_are_undecodable() -> None:
    with pytest.raises(events.UndecodableEvent):
        events.decode(b"", {events.EVENT_TYPE: "nope"})
    sent = events.Envelope(kind=events.SANDBOX_STARTED, payload=sandbox_pb2.SandboxStarted())
    with pytest.raises(events.UndecodableEvent):
        events.decode(b"\xff\xff\xff", sent.headers())


def test_subjects_carry_the_region() -> None:
    assert events.SANDBOX_REQUESTED.subject("eu-1") == "hutch.eu-1.sandbox.requested"
    assert events.node_command_subject("eu-1", "n7") == "hutch.eu-1.node.n7.cmd"
