"""Settings shared by every service.

All settings come from the environment under one prefix, `HUTCH_`, with `__` between nesting levels:
`HUTCH_NATS__URL`, `HUTCH_POSTGRES__DSN`, `HUTCH_GRPC__PORT`. Each service subclasses
`ServiceSettings` and adds its own group. Settings are validated before anything starts, so a bad
environment stops the process with a readable error instead of a half-started service.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_REGION = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_REGION_RULE = "1-31 lowercase letters, digits or '-', starting with a letter"


def _checked_region(value: str) -> str:
    if not _REGION.match(value):
        raise ValueError(f"region {value!r} must be {_REGION_RULE} (it becomes part of NATS subjects and stream names)")
    return value


def _region_list(value: Any) -> tuple[str, ...]:
    """`"us-east,ap-south"` (or a sequence) as region names, in the order given."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [_checked_region(str(item).strip()) for item in items if str(item).strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"a region is named twice in {value!r}")
    return tuple(names)


def _region_addresses(value: Any) -> dict[str, str]:
    """`"us-east=10.0.0.5:50051,ap-south=..."` (or a mapping) as region -> host:port, in the order given."""
    if not isinstance(value, str):
        return dict(value)
    addresses: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        region, sep, address = item.partition("=")
        host, colon, port = address.strip().rpartition(":")
        if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not REGION=HOST:PORT")
        region = _checked_region(region.strip())
        if region in addresses:
            raise ValueError(f"region {region!r} is named twice")
        addresses[region] = address.strip()
    return addresses


# Other regions' names, nearest first: `HUTCH_PEER_REGIONS=us-east,ap-south`.
RegionList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_region_list)]
# Other regions' addresses of one service, nearest first: `region=host:port,...`.
RegionAddresses = Annotated[dict[str, str], NoDecode, BeforeValidator(_region_addresses)]


class NatsSettings(BaseModel):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = 5.0


class PostgresSettings(BaseModel):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/hutch")
    min_connections: int = Field(default=2, ge=1)
    max_connections: int = Field(default=10, ge=1)


class S3Settings(BaseModel):
    endpoint: str = "127.0.0.1:8333"
    access_key: SecretStr = SecretStr("hutch")
    secret_key: SecretStr = SecretStr("hutch-secret")
    bucket: str = "hutch"
    secure: bool = False
    region: str = "us-east-1"


class GrpcSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # How long in-flight calls may run on after a shutdown signal before they are cancelled.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    max_message_bytes: int = 8 * 1024 * 1024


class TelemetrySettings(BaseModel):
    # "none": no spans leave the process; "file": JSON lines to file_path; "otlp": to otlp_endpoint.
    exporter: Literal["none", "console", "file", "otlp"] = "none"
    file_path: str = ""
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Seconds between metric exports; with "file", metrics go to metrics_file_path, by default
    # metrics.jsonl in file_path's folder.
    metrics_interval_s: float = Field(default=10.0, gt=0)
    metrics_file_path: str = ""


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses add their own groups."""

    model_config = SettingsConfigDict(env_prefix="HUTCH_", env_nested_delimiter="__", extra="ignore", frozen=True)

    region: str = "local"
    log_level: str = "INFO"
    # Shared secret that authenticates calls between services (gateway -> node-agent data plane).
    internal_token: SecretStr = SecretStr("")
    nats: NatsSettings = NatsSettings()
    postgres: PostgresSettings = PostgresSettings()
    grpc: GrpcSettings = GrpcSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # The installation's other regions, nearest first. Their NATS clusters are joined with this
    # region's into one supercluster; billing reads their usage, the gateway looks for sandboxes
    # there and sends creates there when this region has no room.
    peer_regions: RegionList = ()

    @field_validator("region")
    @classmethod
    def _region_is_a_subject_token(cls, value: str) -> str:
        return _checked_region(value)

    @field_validator("peer_regions")
    @classmethod
    def _peers_exclude_this_region(cls, value: tuple[str, ...], info: Any) -> tuple[str, ...]:
        if info.data.get("region") in value:
            raise ValueError(f"peer_regions names this service's own region {info.data['region']!r}")
        return value

    def all_regions(self) -> tuple[str, ...]:
        """This region, then its peers nearest first."""
        return (self.region, *self.peer_regions)
