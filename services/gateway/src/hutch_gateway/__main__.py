"""hutch-gateway: run the gateway, or `hutch-gateway admin ...` to manage tenants and keys."""

from __future__ import annotations

import asyncio
import sys

from hutch.core.lifecycle import configure_logging
from hutch_gateway.settings import GatewaySettings


def main() -> None:
    if sys.argv[1:2] == ["admin"]:
        from hutch_gateway import admin

        raise SystemExit(admin.main(sys.argv[2:]))
    from hutch_gateway import app

    settings = GatewaySettings()
    configure_logging(settings.log_level, "gateway")
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
