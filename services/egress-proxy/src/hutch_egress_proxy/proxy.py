"""One node's egress proxy, assembled: registry, resolver, DNS responder, mitmproxy, accounting.

Used by the process (`app.run`) and by tests that run the proxy in-process. mitmproxy keeps its
master in a module global, so a process holds one proxy at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hutch.core.config import GrpcSettings
from hutch.core.grpc_runtime import Server, serve
from hutch.egress_policy.platform import Network, parse_networks
from hutch.internal.v1 import egress_proxy_pb2_grpc
from hutch_egress_proxy.accounting import Accounting, Publish
from hutch_egress_proxy.addon import EgressAddon
from hutch_egress_proxy.ca import CaFiles, ensure_ca
from hutch_egress_proxy.credentials import Credentials
from hutch_egress_proxy.dns_server import DnsResponder, serve_dns
from hutch_egress_proxy.grpc_api import EgressProxyServicer
from hutch_egress_proxy.host_addresses import NodeAddresses
from hutch_egress_proxy.mitm import make_master
from hutch_egress_proxy.registry import Registry
from hutch_egress_proxy.resolver import Resolver
from hutch_egress_proxy.settings import EgressOptions

log = logging.getLogger(__name__)


@dataclass
class EgressProxy:
    options: EgressOptions
    registry: Registry
    resolver: Resolver
    credentials: Credentials
    accounting: Accounting
    ca: CaFiles
    server: Server
    dns: asyncio.DatagramTransport
    addresses: NodeAddresses
    addon: EgressAddon

    @classmethod
    async def start(
        cls,
        options: EgressOptions,
        region: str,
        publish: Publish | None,
        grpc_settings: GrpcSettings,
        internal_token: str,
    ) -> EgressProxy:
        ca = ensure_ca(options.state_dir, options.system_ca_file, options.upstream_ca_file)
        registry = Registry()
        resolver = Resolver(options.nameservers, options.dns_ttl_s)
        credentials = Credentials(
            options.secrets_resolver_address,
            options.resolver_token.get_secret_value(),
            options.grants_cache_s,
            options.values_cache_s,
        )
        accounting = Accounting(publish, region, options.node_id, registry.epoch)
        addresses = NodeAddresses()
        extra = parse_networks(options.deny_cidrs)

        def deny() -> Sequence[Network]:
            return (*extra, *addresses.current)

        def forget(sandbox_id: str) -> None:
            credentials.forget(sandbox_id)
            accounting.forget(sandbox_id)

        dns = await serve_dns(DnsResponder(registry, resolver, extra), options.dns_host, options.dns_port)
        server = await serve(
            grpc_settings,
            [
                (
                    egress_proxy_pb2_grpc.add_EgressProxyServicer_to_server,
                    EgressProxyServicer(registry, forget),
                    "hutch.internal.v1.EgressProxy",
                )
            ],
            internal_token=internal_token or None,
        )
        addon = EgressAddon(registry, resolver, credentials, accounting, deny)
        return cls(options, registry, resolver, credentials, accounting, ca, server, dns, addresses, addon)

    async def run(self, stop: asyncio.Event) -> None:
        """Serves until `stop` is set."""
        master = make_master(self.addon, self.ca, self.options.transparent_host, self.options.transparent_port)
        tasks = [
            asyncio.create_task(master.run()),
            asyncio.create_task(self.accounting.run(stop, self.options.report_interval_s)),
            asyncio.create_task(self.addresses.run(stop)),
        ]
        log.info(
            "egress-proxy for node %s: transparent %s:%d, DNS %s:%d, registry on %d",
            self.options.node_id,
            self.options.transparent_host,
            self.options.transparent_port,
            self.options.dns_host,
            self.options.dns_port,
            self.server.port,
        )
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            # mitmproxy leaves its listeners open at shutdown (a process normally exits then).
            server = master.addons.get("proxyserver")
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.servers.update([])
            master.shutdown()
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        self.dns.close()
        await self.server.stop()
        await self.credentials.close()
