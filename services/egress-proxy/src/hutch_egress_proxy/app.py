"""Wiring and lifecycle of the egress-proxy."""

from __future__ import annotations

import logging

from hutch.core import errors, telemetry
from hutch.core.bus import Bus
from hutch.core.lifecycle import shutdown_on_signals
from hutch_egress_proxy.proxy import EgressProxy
from hutch_egress_proxy.settings import EgressProxySettings

log = logging.getLogger(__name__)


async def run(settings: EgressProxySettings) -> None:
    if not settings.internal_token.get_secret_value():
        # The registry tells the proxy (and through it the secrets-broker) which tenant and sandbox
        # an address belongs to; only the node-agent may say so.
        raise errors.FailedPrecondition("HUTCH_INTERNAL_TOKEN must be set: the registry serves the node-agent only")
    shutdown = shutdown_on_signals()
    with telemetry.tracing(settings.telemetry, "egress-proxy", settings.region):
        async with Bus.connect(settings.nats, settings.region, f"egress-proxy-{settings.egress.node_id}") as bus:
            proxy = await EgressProxy.start(
                settings.egress,
                settings.region,
                bus.publish,
                settings.grpc,
                settings.internal_token.get_secret_value(),
            )
            try:
                await proxy.run(shutdown)
            finally:
                await proxy.close()
