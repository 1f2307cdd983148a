"""billing-meter settings (env: HUTCH_BILLING__*, plus the shared HUTCH_* groups).

An operator's own price books are one JSON list, e.g.

    HUTCH_BILLING__PRICE_BOOKS='[{"name": "acme", "model": "active-cpu",
        "cpu_per_vcpu_second": "0.000015", "memory_per_gib_second": "0.000002",
        "cpu_unit_seconds": "0.01", "free_cpu_vcpu_seconds": "3600"}]'
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hutch.core.config import ServiceSettings
from hutch_billing_meter.domain.pricing import Billable, CpuModel, MemoryBasis, PriceBook, Rates

_NON_NEGATIVE = Field(default=Decimal(0), ge=0)


class PriceBookSetting(BaseModel):
    """One price book as an operator writes it: flat, amounts as decimal strings or numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    model: Literal["active-cpu", "wall-clock"]
    memory_basis: Literal["provisioned", "used"] = "provisioned"
    currency: str = "USD"
    description: str = ""
    cpu_per_vcpu_second: Decimal = _NON_NEGATIVE
    memory_per_gib_second: Decimal = _NON_NEGATIVE
    storage_per_gb_hour: Decimal = _NON_NEGATIVE
    egress_per_gb: Decimal = _NON_NEGATIVE
    cpu_unit_seconds: Decimal = _NON_NEGATIVE
    memory_minimum_gib: Decimal = _NON_NEGATIVE
    free_cpu_vcpu_seconds: Decimal = _NON_NEGATIVE
    free_memory_gib_seconds: Decimal = _NON_NEGATIVE
    free_storage_gb_hours: Decimal = _NON_NEGATIVE
    free_egress_gb: Decimal = _NON_NEGATIVE

    def book(self) -> PriceBook:
        return PriceBook(
            name=self.name,
            model=CpuModel(self.model),
            memory_basis=MemoryBasis(self.memory_basis),
            rates=Rates(
                cpu_per_vcpu_second=self.cpu_per_vcpu_second,
                memory_per_gib_second=self.memory_per_gib_second,
                storage_per_gb_hour=self.storage_per_gb_hour,
                egress_per_gb=self.egress_per_gb,
            ),
            cpu_unit_seconds=self.cpu_unit_seconds,
            memory_minimum_gib=self.memory_minimum_gib,
            free_per_month=Billable(
                cpu=self.free_cpu_vcpu_seconds,
                memory=self.free_memory_gib_seconds,
                storage=self.free_storage_gb_hours,
                egress=self.free_egress_gb,
            ),
            currency=self.currency,
            description=self.description,
            source="operator",
        )


class BillingOptions(BaseModel):
    # The operator's own books, beside the presets (one with a preset's name replaces it).
    price_books: list[PriceBookSetting] = []
    # The book a query uses when it names none.
    default_price_book: str = "cloudflare"
    # Usage events added to the ledger in one transaction.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # How long processed event ids are kept to recognise duplicates; events older than this are
    # dropped. Far longer than the usage stream keeps events (7 days).
    dedup_retention_days: float = Field(default=30.0, gt=7)


class BillingMeterSettings(ServiceSettings):
    billing: BillingOptions = BillingOptions()
