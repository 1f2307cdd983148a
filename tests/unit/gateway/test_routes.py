from datetime import UTC, datetime

from hutch_gateway.domain import SandboxRecord, State
from hutch_gateway.routes import RouteCache


def record(sandbox_id: str) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id,
        tenant_id="tn",
        name="n",
        template="base",
        state=State.RUNNING,
        cpu_millis=1000,
        memory_mb=512,
        metadata={},
        timeout_seconds=0,
        region="r",
        node_id="n1",
        error_code="",
        state_reason="",
        created_at=datetime.now(UTC),
        started_at=None,
        ended_at=None,
    )


def test_a_change_to_a_sandbox_drops_every_name_it_was_cached_under() -> None:
    cache = RouteCache()
    cache.put("tn", "sb-1", record("sb-1"))
    cache.put("tn", "n", record("sb-1"))
    cache.put("tn", "sb-2", record("sb-2"))
    cache.forget("sb-1")
    assert cache.get("tn", "sb-1") is None and cache.get("tn", "n") is None
    assert cache.get("tn", "sb-2") is not None
    cache.forget(None)
    assert cache.get("tn", "sb-2") is None


def test_entries_are_per_tenant_and_expire() -> None:
    cache = RouteCache(ttl_s=0.0)
    cache.put("tn", "n", record("sb-1"))
    assert cache.get("other", "n") is None
    assert cache.get("tn", "n") is None  # already expired
