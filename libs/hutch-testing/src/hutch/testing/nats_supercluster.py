"""deploy/nats's supercluster on this machine: one real nats-server per region, started from the
deployment's own `server.conf` with the environment of its `<region>.env`, every port moved to a free
loopback port (listeners, routes and gateway URLs alike) and every file under a temporary folder.

For tests of the deployment's NATS configuration and of services that read other regions' streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.local.ports import LOOPBACK, free_port
from hutch.local.process import find_executable

PORT_KEYS = ("NATS_PORT", "NATS_HTTP_PORT", "NATS_CLUSTER_PORT", "NATS_GATEWAY_PORT")
# The first JetStream meta-leader election of a fresh supercluster takes several seconds.
READY_TIMEOUT_S = 30.0


@dataclass
class Region:
    """One region's nats-server: its environment, configuration, process and log."""

    name: str
    env: dict[str, str]
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.env['NATS_PORT']}"

    def monitor(self, endpoint: str) -> dict[str, Any]:
        address = f"http://{LOOPBACK}:{self.env['NATS_HTTP_PORT']}/{endpoint}"
        with urllib.request.urlopen(address, timeout=2) as response:
            result: dict[str, Any] = json.load(response)
        return result

    def start(self) -> None:
        """Starts the server (again: same ports, same store directory), appending to its log."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(find_executable("nats-server")), "-c", str(self.config)],
                env={**base, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as `set -a; . file` reads them."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            (env[key],) = shlex.split(value) or [""]
    return env


def render(nats_dir: Path, regions: Sequence[str], tmp_path: Path) -> dict[str, dict[str, str]]:
    """Each region's environment with every port moved to a free loopback port, everywhere it
    appears (listeners, routes, gateway URLs), and its files under tmp_path."""
    envs = {region: read_env_file(nats_dir / f"{region}.env") for region in regions}
    moved = {}
    for env in envs.values():
        assert env["NATS_HOST"] == LOOPBACK, "the local supercluster binds loopback only"
        for key in PORT_KEYS:
            assert env[key] not in moved, f"port {env[key]} appears twice in {nats_dir}"
            moved[env[key]] = str(free_port())
    for region, env in envs.items():
        for key, value in env.items():
            env[key] = re.sub(r"(?<=:)(\d+)\b", lambda m: moved.get(m.group(1), m.group(1)), value)
            if key in PORT_KEYS:
                env[key] = moved[value]
        env["NATS_STORE_DIR"] = str(tmp_path / region)
        env["NATS_PID_FILE"] = str(tmp_path / f"{region}.pid")
    return envs


@contextlib.contextmanager
def supercluster(nats_dir: Path, regions: Sequence[str], tmp_path: Path) -> Iterator[dict[str, Region]]:
    """Starts every region's server; stops them all on the way out."""
    started: dict[str, Region] = {}
    try:
        for name, env in render(nats_dir, regions, tmp_path).items():
            region = Region(name, env, nats_dir / "server.conf", tmp_path / f"{name}.log")
            region.start()
            started[name] = region
        yield started
    finally:
        for region in started.values():
            region.stop()


def logs(regions: dict[str, Region]) -> str:
    return "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in regions.values())


async def wait_for(
    what: str, check: Callable[[Region], bool], regions: dict[str, Region], timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Waits until `check` holds for every region; fails with the servers' logs when one exits or
    it does not hold in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        for region in regions.values():
            assert region.running(), f"nats-server {region.name} exited\n{logs(regions)}"
        try:
            if all(check(region) for region in regions.values()):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s\n{logs(regions)}")
        await asyncio.sleep(0.2)


def gateways_joined(regions: Sequence[str]) -> Callable[[Region], bool]:
    """A check: the region's gateway connects out to and in from every other region."""

    def joined(region: Region) -> bool:
        gatewayz = region.monitor("gatewayz")
        others = {r for r in regions if r != region.name}
        return bool(
            gatewayz["name"] == region.name
            and others <= set(gatewayz.get("outbound_gateways", {}))
            and others <= set(gatewayz.get("inbound_gateways", {}))
        )

    return joined


def jetstream_ready(region: Region) -> bool:
    """A check: the supercluster's JetStream has a meta leader."""
    jsz = region.monitor("jsz")
    return bool(jsz.get("meta_cluster", {}).get("leader"))
