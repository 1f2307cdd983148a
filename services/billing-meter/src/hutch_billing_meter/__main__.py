"""hutch-billing-meter: run the billing-meter (settings from HUTCH_* env)."""

from __future__ import annotations

import asyncio

from hutch.core.lifecycle import configure_logging
from hutch_billing_meter import app
from hutch_billing_meter.settings import BillingMeterSettings


def main() -> None:
    settings = BillingMeterSettings()
    configure_logging(settings.log_level, "billing-meter")
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
