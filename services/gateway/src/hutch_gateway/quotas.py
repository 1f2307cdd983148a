"""Per-tenant concurrency quotas: how many sandboxes a tenant may run at once, and how many vCPUs
and how much memory they may hold together.

Checked in the transaction that starts sandboxes (create, resume, fork) with the tenant's row
locked, so concurrent creates of one tenant cannot both slip under the limit. Paused and sleeping
sandboxes hold nothing and do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from hutch.core import errors

# What holds a node's CPU and memory.
_LIVE = ("pending", "running", "stopping")


@dataclass(frozen=True)
class Quota:
    """0 in a field: no limit on it."""

    sandboxes: int = 0
    cpu_millis: int = 0
    memory_mb: int = 0

    def over(self, other: Quota) -> Quota:
        """This tenant's own limits where set, `other`'s (the defaults) elsewhere."""
        return Quota(
            self.sandboxes or other.sandboxes,
            self.cpu_millis or other.cpu_millis,
            self.memory_mb or other.memory_mb,
        )


@dataclass(frozen=True)
class Usage:
    sandboxes: int
    cpu_millis: int
    memory_mb: int


def check(quota: Quota, used: Usage, count: int, cpu_millis: int, memory_mb: int) -> None:
    """Raises ResourceExhausted when `count` more sandboxes of that size would exceed `quota`."""
    if quota.sandboxes and used.sandboxes + count > quota.sandboxes:
        raise errors.ResourceExhausted(
            f"your quota allows {quota.sandboxes} sandboxes at once and {used.sandboxes} are running: "
            f"kill or pause some first, or ask for a higher quota"
        )
    if quota.cpu_millis and used.cpu_millis + count * cpu_millis > quota.cpu_millis:
        raise errors.ResourceExhausted(
            f"your quota allows {quota.cpu_millis / 1000:g} vCPUs at once; running sandboxes hold "
            f"{used.cpu_millis / 1000:g} and this needs {count * cpu_millis / 1000:g} more"
        )
    if quota.memory_mb and used.memory_mb + count * memory_mb > quota.memory_mb:
        raise errors.ResourceExhausted(
            f"your quota allows {quota.memory_mb} MB of memory at once; running sandboxes hold "
            f"{used.memory_mb} MB and this needs {count * memory_mb} MB more"
        )


async def enforce(
    conn: asyncpg.Connection, tenant_id: str, defaults: Quota, count: int, cpu_millis: int, memory_mb: int
) -> None:
    """Locks the tenant's row for the rest of the transaction and checks its quota."""
    row = await conn.fetchrow(
        "SELECT max_sandboxes, max_cpu_millis, max_memory_mb FROM tenants WHERE id = $1 FOR UPDATE", tenant_id
    )
    if row is None:
        raise errors.NotFound(f"tenant {tenant_id} does not exist")
    quota = Quota(row["max_sandboxes"], row["max_cpu_millis"], row["max_memory_mb"]).over(defaults)
    if not (quota.sandboxes or quota.cpu_millis or quota.memory_mb):
        return
    used = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(cpu_millis), 0) AS cpu, coalesce(sum(memory_mb), 0) AS memory "
        "FROM sandboxes WHERE tenant_id = $1 AND state = ANY($2::text[])",
        tenant_id,
        list(_LIVE),
    )
    check(quota, Usage(int(used["n"]), int(used["cpu"]), int(used["memory"])), count, cpu_millis, memory_mb)


async def set_quota(db: asyncpg.Pool, tenant_name: str, quota: Quota) -> bool:
    result: str = await db.execute(
        "UPDATE tenants SET max_sandboxes = $2, max_cpu_millis = $3, max_memory_mb = $4 WHERE name = $1",
        tenant_name,
        quota.sandboxes,
        quota.cpu_millis,
        quota.memory_mb,
    )
    return result.endswith(" 1")
