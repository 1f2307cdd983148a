"""What a sandbox used, in exact integer units, and the same in the units people bill in.

The ledger keeps integers (nanoseconds, MiB-milliseconds, byte-seconds, bytes) so that adding
reports never rounds; conversion to vCPU-seconds, GiB-seconds, GB-hours and GB happens only when
usage is shown or priced, with Decimal so money never goes through floating point.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import ClassVar

NS_PER_S = Decimal(1_000_000_000)
MIB_MS_PER_GIB_S = Decimal(1024 * 1000)
BYTE_S_PER_GB_H = Decimal(1_000_000_000 * 3600)
BYTES_PER_GB = Decimal(1_000_000_000)
BYTES_PER_GIB = Decimal(2**30)


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage over some stretch of time, in the ledger's integer units."""

    running_ms: int = 0
    cpu_active_ns: int = 0
    cpu_allocated_ns: int = 0
    memory_provisioned_mib_ms: int = 0
    memory_used_mib_ms: int = 0
    # A high-water mark: combining two usages keeps the larger, never the sum.
    memory_peak_bytes: int = 0
    storage_byte_seconds: int = 0
    egress_bytes: int = 0

    SUMMED: ClassVar[tuple[str, ...]] = (
        "running_ms",
        "cpu_active_ns",
        "cpu_allocated_ns",
        "memory_provisioned_mib_ms",
        "memory_used_mib_ms",
        "storage_byte_seconds",
        "egress_bytes",
    )

    def __add__(self, other: Usage) -> Usage:
        values = {name: getattr(self, name) + getattr(other, name) for name in self.SUMMED}
        return Usage(**values, memory_peak_bytes=max(self.memory_peak_bytes, other.memory_peak_bytes))

    def share(self, numerator: int, denominator: int) -> Usage:
        """The summed quantities scaled by numerator/denominator, rounded down; the peak unchanged."""
        values = {name: getattr(self, name) * numerator // denominator for name in self.SUMMED}
        return Usage(**values, memory_peak_bytes=self.memory_peak_bytes)

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @property
    def running_seconds(self) -> Decimal:
        return Decimal(self.running_ms) / 1000

    @property
    def cpu_active_seconds(self) -> Decimal:
        """vCPU-seconds of CPU time used."""
        return Decimal(self.cpu_active_ns) / NS_PER_S

    @property
    def cpu_allocated_seconds(self) -> Decimal:
        """vCPU-seconds held, whether used or not."""
        return Decimal(self.cpu_allocated_ns) / NS_PER_S

    @property
    def memory_provisioned_gib_seconds(self) -> Decimal:
        return Decimal(self.memory_provisioned_mib_ms) / MIB_MS_PER_GIB_S

    @property
    def memory_used_gib_seconds(self) -> Decimal:
        return Decimal(self.memory_used_mib_ms) / MIB_MS_PER_GIB_S

    @property
    def memory_peak_gib(self) -> Decimal:
        return Decimal(self.memory_peak_bytes) / BYTES_PER_GIB

    @property
    def storage_gb_hours(self) -> Decimal:
        return Decimal(self.storage_byte_seconds) / BYTE_S_PER_GB_H

    @property
    def egress_gb(self) -> Decimal:
        return Decimal(self.egress_bytes) / BYTES_PER_GB


ZERO = Usage()


def total(usages: list[Usage]) -> Usage:
    result = ZERO
    for usage in usages:
        result = result + usage
    return result
