"""Gateway settings (env: HUTCH_GATEWAY__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from hutch.core.config import RegionAddresses, ServiceSettings
from hutch_gateway.quotas import Quota


class GatewayOptions(BaseModel):
    @property
    def default_quota(self) -> Quota:
        return Quota(self.tenant_max_sandboxes, self.tenant_max_cpu_millis, self.tenant_max_memory_mb)

    # When set, the gateway makes sure tenant `bootstrap_tenant` exists and accepts this key
    # (how `hutch local up` provisions its dev key).
    bootstrap_api_key: SecretStr = SecretStr("")
    bootstrap_tenant: str = "dev"
    # How long Create waits for a node to start the sandbox before answering DEADLINE_EXCEEDED.
    create_timeout_s: float = Field(default=60.0, gt=0)
    # How long Kill waits for the node to confirm.
    kill_timeout_s: float = Field(default=30.0, gt=0)
    # A node whose last heartbeat is older than this is reported unreachable.
    node_grace_s: float = Field(default=10.0, gt=0)
    # Upper bounds on what one sandbox may ask for.
    max_cpu_millis: int = Field(default=16_000, ge=100)
    max_memory_mb: int = Field(default=65_536, ge=64)
    # Default per-tenant concurrency quotas (`hutch-gateway admin set-quota` sets a tenant's own):
    # live sandboxes, and the vCPU millis and memory they hold together. 0: no limit.
    tenant_max_sandboxes: int = Field(default=0, ge=0)
    tenant_max_cpu_millis: int = Field(default=0, ge=0)
    tenant_max_memory_mb: int = Field(default=0, ge=0)
    # How long an API key lookup is cached; a revoked key stops working within this time.
    api_key_cache_s: float = Field(default=30.0, ge=0)
    # The preview edge: HTTP requests for PORT-SANDBOX.<preview_domain> reach that port inside the
    # sandbox. Port 0 turns the edge off. `*.localhost` resolves to loopback on most systems.
    preview_host: str = "127.0.0.1"
    preview_port: int = Field(default=0, ge=0, le=65535)
    preview_domain: str = "localhost"
    # The scheme and port the URLs handed out carry (a TLS terminator in front changes both);
    # 0 means preview_port.
    preview_scheme: str = "http"
    preview_url_port: int = Field(default=0, ge=0, le=65535)
    # Signs preview tokens; derived from the internal token when empty.
    preview_secret: SecretStr = SecretStr("")
    # host:port of the billing-meter, which serves the usage API behind the gateway; empty: the
    # usage API answers UNAVAILABLE.
    billing_meter_address: str = ""
    # host:port of the secrets-broker, which serves the Secrets API behind the gateway; empty: the
    # Secrets API answers UNAVAILABLE.
    secrets_broker_address: str = ""
    # host:port of the snapshot-store, which holds snapshots; empty: Snapshot, Create from a snapshot
    # and the Snapshots API answer UNAVAILABLE (pause, resume and forks still work within a node).
    snapshot_store_address: str = ""
    # How long a node may take to capture a sandbox (and, for Snapshot, to store it).
    snapshot_timeout_s: float = Field(default=600.0, gt=0)
    # The gateways of the installation's other regions, nearest first: `us-east=10.0.0.5:50051,...`.
    # Calls for sandboxes they hold are passed to them, and creates go to them when this region has
    # no room. Empty: a single-region installation.
    peer_gateways: RegionAddresses = Field(default_factory=dict)


class GatewaySettings(ServiceSettings):
    gateway: GatewayOptions = GatewayOptions()
