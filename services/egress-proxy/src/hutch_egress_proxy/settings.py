"""egress-proxy settings (env: HUTCH_EGRESS__*, plus the shared HUTCH_* groups)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from hutch.core.config import ServiceSettings
from hutch.egress_policy.platform import parse_networks


class EgressOptions(BaseModel):
    # The node whose sandboxes this proxy serves (one proxy per node); names its events' source.
    node_id: str = "local-1"
    # The per-installation CA (private key readable by this process's user only) and its public
    # certificate, `<state_dir>/ca.pem`, which node-agents install into sandboxes.
    state_dir: Path = Path("/var/lib/hutch/egress")
    # Where the node's firewall redirects every TCP connection a sandbox opens, and its DNS queries.
    # The listeners take connections from registered sandbox addresses only.
    transparent_host: str = "0.0.0.0"
    transparent_port: int = Field(default=15001, ge=1, le=65535)
    dns_host: str = "0.0.0.0"
    dns_port: int = Field(default=15053, ge=1, le=65535)
    # Upstream TLS is verified against the system's store, plus this file when set (a private CA).
    system_ca_file: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    upstream_ca_file: Path | None = None
    # DNS servers the proxy asks ("IP" or "IP:PORT"); empty: the host's own resolver.
    nameservers: list[str] = Field(default_factory=list)
    # Further networks no sandbox may reach (the platform's own set and the node's addresses always apply).
    deny_cidrs: list[str] = Field(default_factory=list)
    # The secrets-broker's resolver (host:port) and this proxy's credential for it; without them,
    # a request that needs a secret is refused.
    secrets_resolver_address: str = ""
    resolver_token: SecretStr = SecretStr("")
    # How long the grants covering a sandbox, and resolved values, are kept in memory.
    grants_cache_s: float = Field(default=5.0, ge=0)
    values_cache_s: float = Field(default=60.0, ge=0)
    # Longest TTL handed to sandboxes and kept in the proxy's own cache.
    dns_ttl_s: int = Field(default=30, ge=1, le=3600)
    # How often bytes per sandbox and destination are published (usage.egress, egress.traffic).
    report_interval_s: float = Field(default=10.0, gt=0)

    @field_validator("deny_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        parse_networks(values)
        return values


class EgressProxySettings(ServiceSettings):
    egress: EgressOptions = EgressOptions()
