"""The node's own addresses: no sandbox may reach them through the proxy (its firewall refuses
them first; this is the second line)."""

from __future__ import annotations

import asyncio
import json
import logging
from ipaddress import ip_network

from hutch.egress_policy.platform import Network

log = logging.getLogger(__name__)


async def node_addresses() -> tuple[Network, ...]:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-j", "addr", "show", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        found: list[Network] = []
        for link in json.loads(out or b"[]"):
            for info in link.get("addr_info", []):
                found.append(ip_network(info["local"]))
        return tuple(found)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("could not list the node's addresses: %r", exc)
        return ()


class NodeAddresses:
    """Refreshed every minute (interfaces come and go as sandboxes do)."""

    def __init__(self) -> None:
        self.current: tuple[Network, ...] = ()

    async def run(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        while not stop.is_set():
            self.current = await node_addresses()
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass
