"""Node-agent settings (env: HUTCH_NODE__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hutch.core.config import ServiceSettings
from hutch_node_agent.oci import USERNS_SIZE

_NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _default_node_id() -> str:
    name = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")
    return name[:63] or "node"


# Each sandbox takes a /30 of the pool (host end, sandbox end); a /8 is the largest pool the short
# host-side interface names can number (see network.interface_name).
SANDBOX_SUBNET_PREFIX = 30

LARGEST_POOL_PREFIX = 8


class EgressTarget(BaseModel):
    """The one address and TCP port a sandbox may open connections to: the egress proxy."""

    model_config = ConfigDict(frozen=True)

    address: ipaddress.IPv4Address
    port: int = Field(ge=1, le=65535)


class EgressProxyTarget(BaseModel):
    """The node's egress-proxy: every TCP connection a sandbox opens is redirected to its transparent
    port, every DNS query to its DNS port, and the node registers each sandbox with it."""

    model_config = ConfigDict(frozen=True)

    transparent_port: int = Field(ge=1, le=65535)
    dns_port: int = Field(ge=1, le=65535)
    # host:port of the proxy's registry (gRPC; the internal token authenticates the node).
    api: str
    # The proxy's CA certificate (public part), installed into every sandbox's trust store.
    ca_file: Path | None = None


class NodeOptions(BaseModel):
    # Stable identity of this node; it names the node's command subject and KV key.
    id: str = Field(default_factory=_default_node_id)
    # Sandboxes, the supervisor runtime and crun's state live here (must support overlayfs upper dirs).
    root_dir: Path = Path("/var/lib/hutch/node")
    # Extracted templates, shared by every node-agent on the host: <templates_dir>/<name>/rootfs.
    templates_dir: Path = Path("/var/lib/hutch/templates")
    # Build the base template at start when it is missing (about 20-40 s, from Debian packages).
    build_base_template: bool = True
    # The host the gateway dials for this node's data plane.
    advertise_host: str = "127.0.0.1"
    # Capacity offered to the scheduler; 0 means "measure the host".
    cpu_millis: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    # Memory kept back for the host and the platform when memory_mb is measured.
    reserved_memory_mb: int = Field(default=1024, ge=0)
    # A sandbox's CPU is a quota, not a reservation, and agents mostly wait on a model: the node
    # offers this many times its measured cores. Memory is not overcommitted by default.
    cpu_overcommit: float = Field(default=8.0, ge=1.0)
    memory_overcommit: float = Field(default=1.0, ge=1.0)
    # Each sandbox's cgroup is <cgroup_parent>/<sandbox id> in every controller hierarchy.
    cgroup_parent: str = "hutch"
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    # Usage metering: every running sandbox's cgroup is sampled this often, and a usage report per
    # sandbox is published this often (and once more when it stops).
    usage_sample_interval_s: float = Field(default=1.0, gt=0)
    usage_report_interval_s: float = Field(default=10.0, gt=0)
    # Largest single file a Files.Write may upload.
    max_file_bytes: int = Field(default=4 * 1024**3, gt=0)
    # Largest image archive a template import may upload, and the most its layers may unpack to.
    max_template_bytes: int = Field(default=16 * 1024**3, gt=0)
    max_template_unpacked_bytes: int = Field(default=64 * 1024**3, gt=0)
    # Longest wait for a new sandbox's supervisor to answer.
    start_timeout_s: float = Field(default=30.0, gt=0)
    # How long before a sandbox's timeout fires the node publishes sandbox.timeout_warning (at most
    # a tenth of the timeout, so short timeouts still warn before they fire).
    timeout_warning_s: float = Field(default=60.0, ge=0)
    # The snapshot-store (host:port); empty: snapshots stay on this node and never leave it.
    snapshot_store_address: str = ""
    # Frozen copies of snapshots kept on this node for fast restores, forks and resumes, in GiB (by
    # their logical size); beyond it the least recently used ones the store also holds are dropped.
    snapshot_cache_gb: float = Field(default=20.0, ge=0)
    # Chunks of snapshots this node wrote or read, kept for the next read (GiB; 0: none).
    chunk_cache_gb: float = Field(default=10.0, ge=0)
    pids_limit: int = Field(default=1024, ge=16)
    open_files_limit: int = Field(default=4096, ge=64)
    # Most a sandbox may write into its own root filesystem (data and metadata), in MiB; writes past
    # it fail with EDQUOT inside the sandbox. 0 turns disk quotas off.
    disk_quota_mb: int = Field(default=10240, ge=0)
    # Sandbox folders live on a btrfs volume with quotas, mounted at volume_path (default
    # <root_dir>/volume). Unless that path already lies on btrfs, the volume is a sparse image file
    # <volume_path>.img of this many GiB: sandboxes together can never use more of the host disk.
    volume_size_gb: int = Field(default=64, ge=1)
    volume_path: Path | None = None
    # IPv4 pool for sandbox networks, one /30 per sandbox. The default is a slice of carrier-grade
    # NAT space (RFC 6598) that nothing else on a host uses; node-agents sharing a host need
    # disjoint pools, and the pool must not overlap any network the host routes to.
    sandbox_network: str = "100.96.0.0/16"
    # Where a sandbox may connect to (HUTCH_NODE__EGRESS_TARGET__ADDRESS and __PORT); unset means a
    # sandbox reaches nothing at all.
    egress_target: EgressTarget | None = None
    # The node's egress-proxy (HUTCH_NODE__EGRESS_PROXY__TRANSPARENT_PORT, __DNS_PORT, __API,
    # __CA_FILE); unset means a sandbox reaches nothing (or only the egress target above).
    egress_proxy: EgressProxyTarget | None = None
    # Sandboxes run in a user namespace: their uids 0..65535 are host uids userns_shift..+65535, so
    # root in a sandbox is not root on the host. Templates are stored with their owners shifted to
    # match. 0 turns the mapping off (not recommended).
    userns_shift: int = Field(default=100_000, ge=0, le=2**32 - USERNS_SIZE - 1)

    @field_validator("id")
    @classmethod
    def _id_is_a_subject_token(cls, value: str) -> str:
        if not _NODE_ID.match(value):
            raise ValueError("node id must be 1-63 lowercase letters, digits or '-'")
        return value

    @field_validator("cgroup_parent")
    @classmethod
    def _cgroup_parent_is_relative(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError("cgroup_parent must be a relative cgroup path such as 'hutch'")
        return value

    @field_validator("sandbox_network")
    @classmethod
    def _sandbox_network_is_a_pool(cls, value: str) -> str:
        try:
            pool = ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"sandbox_network must be an IPv4 network such as 100.96.0.0/16 ({exc})") from exc
        if not LARGEST_POOL_PREFIX <= pool.prefixlen <= SANDBOX_SUBNET_PREFIX:
            raise ValueError(f"sandbox_network must be between a /{LARGEST_POOL_PREFIX} and a /{SANDBOX_SUBNET_PREFIX}")
        return str(pool)

    def measured_cpu_millis(self) -> int:
        return self.cpu_millis or int((os.cpu_count() or 1) * 1000 * self.cpu_overcommit)

    def measured_memory_mb(self) -> int:
        if self.memory_mb:
            return self.memory_mb
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        return int(max(256, total_mb - self.reserved_memory_mb) * self.memory_overcommit)


class NodeAgentSettings(ServiceSettings):
    node: NodeOptions = NodeOptions()
