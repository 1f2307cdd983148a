"""mitmproxy 11 as a library: a master with only the addons Hutch needs, in transparent mode."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from hutch_egress_proxy.ca import CaFiles


def make_master(addon: Any, ca: CaFiles, host: str, port: int) -> Master:
    """A master that is not running yet: `await master.run()`, `master.shutdown()`."""
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    master = Master(options.Options(), with_termlog=False)
    # Ours before mitmproxy's NextLayer, so our layer decisions come first.
    master.addons.add(core.Core(), proxyserver.Proxyserver(), addon, next_layer.NextLayer(), tlsconfig.TlsConfig())
    master.options.update(
        mode=[f"transparent@{host}:{port}"],
        confdir=str(ca.confdir),
        # Nothing is dialled before the policy has seen the request.
        connection_strategy="lazy",
        ssl_verify_upstream_trusted_ca=str(ca.upstream_bundle),
        rawtcp=False,
        http3=False,
        upstream_cert=False,
    )
    return master
