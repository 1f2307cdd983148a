"""Presets load, carry their sources and reproduce the vendors' own examples; operator books parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from hutch.core import errors
from hutch_billing_meter.app import price_books
from hutch_billing_meter.domain.catalogue import PriceBooks
from hutch_billing_meter.domain.presets import CLOUDFLARE, E2B, PRESETS
from hutch_billing_meter.domain.pricing import CpuModel, UsageRow, price_rows, totals
from hutch_billing_meter.domain.quantities import Usage
from hutch_billing_meter.domain.shapes import SHAPES, shape
from hutch_billing_meter.settings import BillingMeterSettings

S = 1_000_000_000
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_every_preset_loads_and_names_its_source() -> None:
    books = PriceBooks(PRESETS, "cloudflare")
    assert {book.name for book in books.all()} == {"cloudflare", "vercel", "aws-agentcore", "e2b", "modal"}
    for book in PRESETS:
        assert "https://" in book.source, book.name
        assert book.rates.cpu_per_vcpu_second > 0
    assert {book.model for book in PRESETS} == {CpuModel.ACTIVE, CpuModel.WALL_CLOCK}


def test_e2b_reproduces_its_documented_example() -> None:
    # 8 vCPU and 4 GB for an hour: $0.468.
    usage = Usage(running_ms=3600_000, cpu_allocated_ns=8 * 3600 * S, memory_provisioned_mib_ms=4096 * 3600 * 1000)
    assert totals(price_rows([UsageRow(NOW, "sb", usage)], E2B)).gross.total == Decimal("0.468")


def test_cloudflare_bills_active_cpu_in_10_ms_units() -> None:
    assert CLOUDFLARE.cpu_unit_seconds == Decimal("0.01")
    cost = totals(price_rows([UsageRow(NOW, "sb", Usage(cpu_active_ns=1))], CLOUDFLARE)).gross
    assert cost.cpu == Decimal("0.01") * Decimal("0.00002")


def test_a_mostly_waiting_agent_is_cheaper_on_active_cpu_and_a_burst_is_not() -> None:
    def cost(book_name: str, shape_name: str) -> Decimal:
        book = PriceBooks(PRESETS, "cloudflare").get(book_name)
        return totals(price_rows([UsageRow(NOW, "x", shape(shape_name).usage())], book)).gross.cpu

    waiting = shape("background-coding-agent").usage()
    assert waiting.cpu_active_ns * 10 < waiting.cpu_allocated_ns
    assert cost("cloudflare", "background-coding-agent") < cost("e2b", "background-coding-agent")
    burst = shape("rl-burst").usage()
    assert burst.cpu_active_ns == burst.cpu_allocated_ns
    assert set(SHAPES) == {"background-coding-agent", "rl-burst", "computer-use-session"}
    with pytest.raises(errors.InvalidArgument, match="known shapes"):
        shape("nope")


def test_operator_books_come_from_json_settings_and_may_replace_a_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    books = [
        {
            "name": "acme",
            "model": "wall-clock",
            "cpu_per_vcpu_second": "0.00001",
            "memory_per_gib_second": 0.000001,
            "free_cpu_vcpu_seconds": "3600",
        },
        {"name": "e2b", "model": "active-cpu", "cpu_per_vcpu_second": "0.5"},
    ]
    monkeypatch.setenv("HUTCH_BILLING__PRICE_BOOKS", json.dumps(books))
    monkeypatch.setenv("HUTCH_BILLING__DEFAULT_PRICE_BOOK", "acme")
    catalogue = price_books(BillingMeterSettings())
    acme = catalogue.get()
    assert acme.name == "acme" and acme.model is CpuModel.WALL_CLOCK and acme.source == "operator"
    assert acme.rates.cpu_per_vcpu_second == Decimal("0.00001")
    assert acme.free_per_month.cpu == Decimal(3600)
    assert catalogue.get("e2b").rates.cpu_per_vcpu_second == Decimal("0.5")
    with pytest.raises(errors.InvalidArgument, match="no price book"):
        catalogue.get("missing")


def test_a_default_that_names_no_book_is_refused() -> None:
    with pytest.raises(ValueError, match="default price book"):
        PriceBooks(PRESETS, "missing")
