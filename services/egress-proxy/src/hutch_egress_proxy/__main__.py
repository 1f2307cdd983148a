"""hutch-egress-proxy: run one node's egress proxy (settings from HUTCH_* env)."""

from __future__ import annotations

import asyncio

from hutch.core.lifecycle import configure_logging
from hutch_egress_proxy import app
from hutch_egress_proxy.settings import EgressProxySettings


def main() -> None:
    settings = EgressProxySettings()
    configure_logging(settings.log_level, "egress-proxy")
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
