"""Which creates a warm pool can serve, and what a refill round starts and retires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hutch_gateway.domain import CreateRequest, SandboxRecord, State
from hutch_gateway.warm_pool import Pool, PoolKind, refill_plan, wanted_kind

BASE = PoolKind("base", "container", 1000, 512)
GVISOR = PoolKind("base", "gvisor", 1000, 512)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def member(number: int, kind: PoolKind = BASE, state: State = State.RUNNING) -> SandboxRecord:
    return SandboxRecord(
        id=f"sb-member{number:04d}", tenant_id="warm-pool", name="", template=kind.template, state=state,
        cpu_millis=kind.cpu_millis, memory_mb=kind.memory_mb, metadata={}, timeout_seconds=0, region="local",
        node_id="n1", error_code="", state_reason="", created_at=T0 + timedelta(seconds=number),
        started_at=T0 + timedelta(seconds=number), ended_at=None, isolation=kind.isolation,
    )  # fmt: skip


def request(**changes: object) -> CreateRequest:
    fields: dict[str, object] = {"template": "base", "name": "", "cpu_millis": 1000, "memory_mb": 512}
    fields.update(changes)
    return CreateRequest(**fields)  # type: ignore[arg-type]


def test_a_plain_create_asks_for_its_exact_kind() -> None:
    assert wanted_kind(request(name="x", envs={"A": "1"}, timeout_seconds=60), "gvisor", "base") == GVISOR


def test_snapshots_automatic_memory_and_a_tenants_own_template_never_come_from_a_pool() -> None:
    assert wanted_kind(request(snapshot="snap-1"), "container", "base") is None
    assert wanted_kind(request(memory_ceiling_mb=2048), "container", "base") is None
    # The tenant has its own template called "base": no member holds it.
    assert wanted_kind(request(), "container", "tn-abc/base") is None


def test_a_refill_requests_what_each_pool_lacks() -> None:
    start, retire = refill_plan([Pool(BASE, 3), Pool(GVISOR, 1)], [member(1), member(2, state=State.PENDING)], set())
    assert start == {BASE: 1, GVISOR: 1}
    assert retire == []


def test_a_kind_that_fails_to_start_is_left_alone_for_now() -> None:
    start, _ = refill_plan([Pool(BASE, 2), Pool(GVISOR, 2)], [], {GVISOR})
    assert start == {BASE: 2}


def test_a_shrunk_pool_retires_its_newest_running_members_and_a_removed_one_all() -> None:
    other = PoolKind("base", "container", 250, 160)
    members = [member(1), member(2), member(3), member(4, state=State.PENDING), member(5, other), member(6, other)]
    start, retire = refill_plan([Pool(BASE, 2)], members, set())
    assert start == {}
    # Four of BASE for a pool of two: the two newest running ones go (the pending one waits).
    assert [r.id for r in retire] == ["sb-member0003", "sb-member0002", "sb-member0006", "sb-member0005"]
