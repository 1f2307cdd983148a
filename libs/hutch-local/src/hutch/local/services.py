"""The platform services `hutch local` runs, one table entry each.

A service is a console script of this environment that reads its settings from HUTCH_* variables and
serves grpc.health.v1 on HUTCH_GRPC__PORT. Adding a service is one `ServiceSpec` in `SERVICES`
(plus, if it needs settings of its own, a function returning them). Entries whose console script is
not installed are skipped, so the table may name services that are still being built.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hutch.local.credentials import StackSecrets
from hutch.local.paths import StackPaths
from hutch.local.ports import LOOPBACK
from hutch.local.process import find_executable

DEV_TENANT = "dev"


@dataclass(frozen=True)
class ServiceContext:
    """What a service's environment is built from."""

    paths: StackPaths
    secrets: StackSecrets
    nats_url: str
    postgres_dsn: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    region: str = "local"
    log_level: str = "INFO"
    node_id: str = "local-1"
    node_root_dir: Path | None = None
    node_cgroup_parent: str | None = None
    sandbox_network: str | None = None
    templates_dir: Path = Path("/var/lib/hutch/templates")
    # The port every service of the stack listens on, by service name.
    ports: Mapping[str, int] = field(default_factory=dict)
    # The other regions of a local multi-region installation, nearest first: their services' ports.
    peers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def _no_settings(context: ServiceContext) -> dict[str, str]:
    return {}


def _gateway_settings(context: ServiceContext) -> dict[str, str]:
    # The gateway creates the dev tenant with this key on startup when it does not exist yet.
    settings = {
        "HUTCH_GATEWAY__BOOTSTRAP_API_KEY": context.secrets.api_key,
        "HUTCH_GATEWAY__BOOTSTRAP_TENANT": DEV_TENANT,
    }
    if "preview" in context.ports:
        settings["HUTCH_GATEWAY__PREVIEW_PORT"] = str(context.ports["preview"])
    if "billing-meter" in context.ports:
        settings["HUTCH_GATEWAY__BILLING_METER_ADDRESS"] = f"{LOOPBACK}:{context.ports['billing-meter']}"
    if "snapshot-store" in context.ports:
        settings["HUTCH_GATEWAY__SNAPSHOT_STORE_ADDRESS"] = f"{LOOPBACK}:{context.ports['snapshot-store']}"
    if "secrets-broker" in context.ports:
        settings["HUTCH_GATEWAY__SECRETS_BROKER_ADDRESS"] = f"{LOOPBACK}:{context.ports['secrets-broker']}"
    return settings


def _node_agent_settings(context: ServiceContext) -> dict[str, str]:
    root = context.node_root_dir or context.paths.local / "node-1"
    settings = {
        "HUTCH_NODE__ID": context.node_id,
        "HUTCH_NODE__ROOT_DIR": str(root),
        "HUTCH_NODE__ADVERTISE_HOST": LOOPBACK,
        "HUTCH_NODE__TEMPLATES_DIR": str(context.templates_dir),
    }
    if context.node_cgroup_parent is not None:
        settings["HUTCH_NODE__CGROUP_PARENT"] = context.node_cgroup_parent
    if context.sandbox_network is not None:
        settings["HUTCH_NODE__SANDBOX_NETWORK"] = context.sandbox_network
    if "snapshot-store" in context.ports:
        settings["HUTCH_NODE__SNAPSHOT_STORE_ADDRESS"] = f"{LOOPBACK}:{context.ports['snapshot-store']}"
    if "egress-proxy" in context.ports:
        settings.update(
            {
                "HUTCH_NODE__EGRESS_PROXY__TRANSPARENT_PORT": str(context.ports["egress-transparent"]),
                "HUTCH_NODE__EGRESS_PROXY__DNS_PORT": str(context.ports["egress-dns"]),
                "HUTCH_NODE__EGRESS_PROXY__API": f"{LOOPBACK}:{context.ports['egress-proxy']}",
                "HUTCH_NODE__EGRESS_PROXY__CA_FILE": str(_egress_dir(context) / "ca.pem"),
            }
        )
    return settings


def _derived(context: ServiceContext, purpose: str) -> str:
    """A stable secret of this stack for one purpose, derived from its internal token."""
    return hmac.new(context.secrets.internal_token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _egress_dir(context: ServiceContext) -> Path:
    return context.paths.local / "egress"


def _secrets_broker_settings(context: ServiceContext) -> dict[str, str]:
    key = base64.b64encode(bytes.fromhex(_derived(context, "secrets-master-key"))).decode()
    return {
        "HUTCH_SECRETS__MASTER_KEYS": f"local:{key}",
        "HUTCH_SECRETS__RESOLVER_TOKEN": _derived(context, "secrets-resolver-token"),
        "HUTCH_SECRETS__RESOLVER_PORT": str(context.ports.get("secrets-resolver", 0)),
    }


def _egress_proxy_settings(context: ServiceContext) -> dict[str, str]:
    settings = {
        "HUTCH_EGRESS__NODE_ID": context.node_id,
        "HUTCH_EGRESS__STATE_DIR": str(_egress_dir(context)),
        "HUTCH_EGRESS__TRANSPARENT_PORT": str(context.ports.get("egress-transparent", 50057)),
        "HUTCH_EGRESS__DNS_PORT": str(context.ports.get("egress-dns", 50059)),
    }
    if "secrets-broker" in context.ports:
        settings["HUTCH_EGRESS__SECRETS_RESOLVER_ADDRESS"] = f"{LOOPBACK}:{context.ports['secrets-resolver']}"
        settings["HUTCH_EGRESS__RESOLVER_TOKEN"] = _derived(context, "secrets-resolver-token")
    return settings


def _snapshot_store_settings(context: ServiceContext) -> dict[str, str]:
    return {
        "HUTCH_SNAPSHOT_STORE__MASTER_KEY": context.secrets.snapshot_master_key,
        "HUTCH_SNAPSHOT_STORE__CACHE_DIR": str(context.paths.local / "snapshot-cache"),
        "HUTCH_SNAPSHOT_STORE__CACHE_BYTES": str(4 * 1024**3),
    }


@dataclass(frozen=True)
class ServiceSpec:
    """One platform service: its name in the stack, console script, default port, own settings."""

    name: str
    script: str
    default_port: int
    settings: Callable[[ServiceContext], dict[str, str]] = _no_settings
    # Further ports the service listens on, by name (resolved like the others: 0 picks a free one).
    extra_ports: tuple[tuple[str, int], ...] = ()


# Started in this order and stopped in reverse: the gateway, the public entry point, starts last and
# stops first, so it never accepts calls the services behind it cannot serve.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("scheduler", "hutch-scheduler", 50052),
    # Snapshot manifests and chunks; node-agents write and restore snapshots through it.
    ServiceSpec("snapshot-store", "hutch-snapshot-store", 50054, _snapshot_store_settings),
    # Tenant secrets; only the egress-proxy resolves values, on a listener of its own.
    ServiceSpec(
        "secrets-broker",
        "hutch-secrets-broker",
        50055,
        _secrets_broker_settings,
        extra_ports=(("secrets-resolver", 50058),),
    ),
    # Every byte sandboxes send out: the node's firewall redirects their TCP and DNS here. Before
    # the node-agent, whose sandboxes need its CA and its registry.
    ServiceSpec(
        "egress-proxy",
        "hutch-egress-proxy",
        50056,
        _egress_proxy_settings,
        extra_ports=(("egress-transparent", 50057), ("egress-dns", 50059)),
    ),
    ServiceSpec("node-agent", "hutch-node-agent", 50061, _node_agent_settings),
    # The usage ledger behind the gateway's Usage API.
    ServiceSpec("billing-meter", "hutch-billing-meter", 50053),
    # The preview edge: HTTP to ports inside sandboxes (http://PORT-SANDBOX.localhost:50080/).
    ServiceSpec("gateway", "hutch-gateway", 50051, _gateway_settings, extra_ports=(("preview", 50080),)),
)


def service(name: str) -> ServiceSpec:
    """The table entry called `name`."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown service {name!r}")


def installed_script(spec: ServiceSpec) -> Path | None:
    """The service's console script, or None when it is not installed (or its code is missing).

    Checking the entry point's module, not just the script file, matters while a service is being
    written: its script may already be installed before the module it runs exists.
    """
    entry_points = importlib.metadata.entry_points(group="console_scripts", name=spec.script)
    if not entry_points:
        return None
    module = next(iter(entry_points)).module
    try:
        if importlib.util.find_spec(module) is None:
            return None
        return find_executable(spec.script)
    except (ImportError, ValueError, FileNotFoundError):
        return None


def _peer_settings(context: ServiceContext) -> dict[str, str]:
    """Where the other regions are: every service of a region gets the same view of them."""
    if not context.peers:
        return {}

    def addresses(service_name: str) -> str:
        return ",".join(
            f"{region}={LOOPBACK}:{ports[service_name]}"
            for region, ports in context.peers.items()
            if service_name in ports
        )

    return {
        "HUTCH_PEER_REGIONS": ",".join(context.peers),
        "HUTCH_GATEWAY__PEER_GATEWAYS": addresses("gateway"),
        "HUTCH_SNAPSHOT_STORE__PEER_STORES": addresses("snapshot-store"),
    }


def service_env(spec: ServiceSpec, context: ServiceContext, port: int) -> dict[str, str]:
    """The HUTCH_* environment of one service listening on `port`."""
    env = {
        "HUTCH_REGION": context.region,
        "HUTCH_LOG_LEVEL": context.log_level,
        "HUTCH_INTERNAL_TOKEN": context.secrets.internal_token,
        "HUTCH_NATS__URL": context.nats_url,
        "HUTCH_POSTGRES__DSN": context.postgres_dsn,
        "HUTCH_S3__ENDPOINT": context.s3_endpoint,
        "HUTCH_S3__ACCESS_KEY": context.s3_access_key,
        "HUTCH_S3__SECRET_KEY": context.s3_secret_key,
        "HUTCH_S3__BUCKET": context.s3_bucket,
        "HUTCH_GRPC__HOST": LOOPBACK,
        "HUTCH_GRPC__PORT": str(port),
        "HUTCH_TELEMETRY__EXPORTER": "file",
        "HUTCH_TELEMETRY__FILE_PATH": str(context.paths.traces_file),
        "HUTCH_TELEMETRY__METRICS_FILE_PATH": str(context.paths.metrics_file),
        "HUTCH_TELEMETRY__METRICS_INTERVAL_S": "5",
    }
    env.update(_peer_settings(context))
    env.update(spec.settings(context))
    return env
