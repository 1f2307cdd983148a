"""Warm pools: sandboxes started ahead of demand and handed to tenants on create.

A pool member is an ordinary sandbox owned by the reserved tenant below until a create claims it.
That tenant has no API keys, so no one can reach a member before it is handed over; its id is
never a tenant's (those are "tn-..."). Nodes do not meter it and billing does not record it: its
time before the handover is the platform's cost, not a tenant's.
"""

from __future__ import annotations

from typing import Final

WARM_POOL_TENANT: Final = "warm-pool"


def is_pool_member(tenant_id: str) -> bool:
    return tenant_id == WARM_POOL_TENANT
