"""deploy/nats forms a two-region supercluster: two real nats-server processes, each one region,
started from deploy/nats/server.conf with the environment of deploy/nats/<region>.env on free
loopback ports, join through their gateways; a request crosses regions, and Hutch's per-region
streams live side by side, each in its own region's cluster, reachable from the other region.
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
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from hutch.core.bus import Bus, sandbox_stream
from hutch.core.config import NatsSettings
from hutch.local.ports import LOOPBACK, free_port
from hutch.local.process import find_executable

pytestmark = pytest.mark.integration

NATS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "nats"
REGIONS = ("eu-west", "us-east")
PORT_KEYS = ("NATS_PORT", "NATS_HTTP_PORT", "NATS_CLUSTER_PORT", "NATS_GATEWAY_PORT")
# The first JetStream meta-leader election of a fresh supercluster takes several seconds.
READY_TIMEOUT_S = 30.0


@dataclass
class Region:
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.env['NATS_PORT']}"

    def monitor(self, endpoint: str) -> dict[str, Any]:
        address = f"http://{LOOPBACK}:{self.env['NATS_HTTP_PORT']}/{endpoint}"
        with urllib.request.urlopen(address, timeout=2) as response:
            result: dict[str, Any] = json.load(response)
        return result


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as `set -a; . file` reads them."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            (env[key],) = shlex.split(value) or [""]
    return env


def render(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Each region's environment with every port moved to a free loopback port, everywhere it
    appears (listeners, routes, gateway URLs), and its files under tmp_path."""
    envs = {region: read_env_file(NATS_DIR / f"{region}.env") for region in REGIONS}
    moved = {}
    for env in envs.values():
        assert env["NATS_HOST"] == LOOPBACK, "the local supercluster binds loopback only"
        for key in PORT_KEYS:
            assert env[key] not in moved, f"port {env[key]} appears twice in deploy/nats"
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
def supercluster(tmp_path: Path) -> Iterator[dict[str, Region]]:
    binary = find_executable("nats-server")
    base = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    regions: dict[str, Region] = {}
    try:
        for name, env in render(tmp_path).items():
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(binary), "-c", str(NATS_DIR / "server.conf")],
                    env={**base, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            regions[name] = Region(name, env, process, log)
        yield regions
    finally:
        for region in regions.values():
            region.process.terminate()
        for region in regions.values():
            try:
                region.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                region.process.kill()
                region.process.wait()


def logs(regions: dict[str, Region]) -> str:
    return "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in regions.values())


async def wait_for(what: str, check: Any, regions: dict[str, Region]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        for region in regions.values():
            assert region.process.poll() is None, f"nats-server {region.name} exited\n{logs(regions)}"
        try:
            if all(check(region) for region in regions.values()):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {READY_TIMEOUT_S} s\n{logs(regions)}")
        await asyncio.sleep(0.2)


def gateways_joined(region: Region) -> bool:
    gatewayz = region.monitor("gatewayz")
    others = {r for r in REGIONS if r != region.name}
    return bool(
        gatewayz["name"] == region.name
        and others <= set(gatewayz.get("outbound_gateways", {}))
        and others <= set(gatewayz.get("inbound_gateways", {}))
    )


def jetstream_ready(region: Region) -> bool:
    jsz = region.monitor("jsz")
    return bool(jsz.get("meta_cluster", {}).get("leader"))


@pytest.fixture
async def regions(tmp_path: Path) -> AsyncIterator[dict[str, Region]]:
    with supercluster(tmp_path) as started:
        await wait_for("the regions did not join through their gateways", gateways_joined, started)
        yield started


async def test_regions_join_and_requests_cross_them(regions: dict[str, Region]) -> None:
    for region in regions.values():
        varz = region.monitor("varz")
        assert varz["cluster"]["name"] == region.name, "a region is a NATS cluster named after it"
    eu = await nats.connect(regions["eu-west"].url)
    us = await nats.connect(regions["us-east"].url)
    try:
        subject = f"hutch.us-east.test.{uuid.uuid4().hex}"

        async def answer(msg: Any) -> None:
            await msg.respond(b"from us-east")

        await us.subscribe(subject, cb=answer)
        await us.flush()
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = await eu.request(subject, b"from eu-west", timeout=1)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert reply.data == b"from us-east"
    finally:
        await eu.close()
        await us.close()


async def test_each_region_keeps_its_streams_and_takes_events_from_the_other(regions: dict[str, Region]) -> None:
    await wait_for("JetStream elected no meta leader", jetstream_ready, regions)
    async with (
        Bus.connect(NatsSettings(url=regions["eu-west"].url), "eu-west", "test-eu") as eu,
        Bus.connect(NatsSettings(url=regions["us-east"].url), "us-east", "test-us") as us,
    ):
        for bus, region in ((eu, "eu-west"), (us, "us-east")):
            info = await bus.js.stream_info(sandbox_stream(region).name)
            assert info.cluster is not None and info.cluster.name == region, f"{region}'s stream is in {info.cluster}"
        # An event for eu-west published in us-east lands in eu-west's stream.
        await us.publish_raw("hutch.eu-west.sandbox.test", b"crossed", {"Nats-Msg-Id": uuid.uuid4().hex})
        info = await eu.js.stream_info(sandbox_stream("eu-west").name)
        assert info.state.messages == 1
        message = await eu.js.get_last_msg(sandbox_stream("eu-west").name, "hutch.eu-west.sandbox.test")
        assert message.data == b"crossed"
