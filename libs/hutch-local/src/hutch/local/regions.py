"""Where the regions of a local multi-region stack live and what each gets (`hutch local up --regions`).

The first region is the ordinary stack in HOME. Region i (2, 3, ...) is named `<first region>-<i>`
and is a stack of its own in HOME/local/regions/<region>: its own NATS server, services, logs and
data, on the first region's ports plus 100 x (i - 1) (a port asked to be 0 stays 0: a free one). It
attaches to the first region's PostgreSQL (a database of its own) and S3 (a bucket of its own). Its
node-agent has its own id, cgroup parent and sandbox address pool, since the host is shared.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hutch.local.model import StackOptions, default_ports
from hutch.local.paths import StackPaths
from hutch.local.servers import PostgresServer, S3Server
from hutch.local.state import load as load_state

MAX_REGIONS = 9
PORT_STRIDE = 100


def region_name(first: str, index: int) -> str:
    """The name of region `index` (1-based) of a stack whose first region is `first`."""
    return first if index == 1 else f"{first}-{index}"


def regions_dir(home: Path) -> Path:
    """Where the regions after the first keep their homes."""
    return StackPaths(home).local / "regions"


def region_home(home: Path, region: str) -> Path:
    """The home of a region after the first."""
    return regions_dir(home) / region


def extra_region_homes(home: Path) -> list[Path]:
    """The homes of the regions after the first that have a recorded stack, in start order."""
    folder = regions_dir(home)
    if not folder.is_dir():
        return []
    homes = [path for path in folder.iterdir() if StackPaths(path).stack_file.exists()]
    return sorted(homes, key=lambda path: (len(path.name), path.name))


def find_region_home(home: Path, region: str | None) -> Path:
    """The home of `region` in the stack of `home` (None: the first region)."""
    if region is None:
        return home
    state = load_state(StackPaths(home).stack_file)
    if state is not None and state.region == region:
        return home
    candidate = region_home(home, region)
    if StackPaths(candidate).stack_file.exists():
        return candidate
    raise KeyError(f"the local stack in {StackPaths(home).local} has no region {region!r}")


def database_name(region: str) -> str:
    """The PostgreSQL database of a region after the first."""
    return "hutch_" + region.replace("-", "_")


def node_id(region: str) -> str:
    """The node-agent of a region after the first: its id names its firewall table and namespaces."""
    return f"{region}-1"


def sandbox_network(index: int) -> str:
    """A sandbox address pool per region, apart from the default 100.96.0.0/16 and from the test
    pools in 100.97.0.0/16."""
    return f"100.{96 + index}.0.0/16"


def region_options(first: StackOptions, index: int, postgres: PostgresServer, s3: S3Server) -> StackOptions:
    """The options of region `index` (2 or more), given the first region's PostgreSQL and S3."""
    name = region_name(first.region, index)
    offset = PORT_STRIDE * (index - 1)
    ports = {}
    for component in default_ports():
        port = first.port(component)
        ports[component] = port + offset if port else 0
    return replace(
        first,
        home=region_home(first.home, name),
        ports=ports,
        nats_url=None,
        postgres_dsn=postgres.dsn_for(database_name(name)),
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=f"{first.s3_bucket}-{name}",
        region=name,
        node_id=node_id(name),
        node_root_dir=None,
        node_cgroup_parent=f"hutch-{node_id(name)}",
        sandbox_network=sandbox_network(index),
    )
