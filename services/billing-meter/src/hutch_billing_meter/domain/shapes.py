"""Named workload shapes, for comparing price books on a workload nobody has run yet.

The shapes are illustrative assumptions, stated here so the comparison can be checked by hand:
they are typical of the three kinds of agent work, not measurements of anyone's workload.
"""

from __future__ import annotations

from dataclasses import dataclass

from hutch.core import errors
from hutch_billing_meter.domain.quantities import Usage

_NS = 1_000_000_000


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    seconds: int
    vcpus: float
    memory_mib: int
    # Average CPU in use over the whole life, in vCPUs.
    busy_vcpus: float
    memory_used_mib: int

    def usage(self) -> Usage:
        return Usage(
            running_ms=self.seconds * 1000,
            cpu_active_ns=int(self.busy_vcpus * self.seconds * _NS),
            cpu_allocated_ns=int(self.vcpus * self.seconds * _NS),
            memory_provisioned_mib_ms=self.memory_mib * self.seconds * 1000,
            memory_used_mib_ms=self.memory_used_mib * self.seconds * 1000,
            memory_peak_bytes=self.memory_used_mib * 2**20,
        )


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            name="background-coding-agent",
            description=(
                "an hour on 2 vCPU / 4 GiB, mostly waiting on a model: builds and tests in short bursts "
                "average 0.1 vCPU; 1.5 GiB in use"
            ),
            seconds=3600,
            vcpus=2,
            memory_mib=4096,
            busy_vcpus=0.1,
            memory_used_mib=1536,
        ),
        Shape(
            name="rl-burst",
            description="3 minutes on 4 vCPU / 4 GiB, every vCPU saturated until it is killed; 3 GiB in use",
            seconds=180,
            vcpus=4,
            memory_mib=4096,
            busy_vcpus=4,
            memory_used_mib=3072,
        ),
        Shape(
            name="computer-use-session",
            description=(
                "4 hours on 2 vCPU / 8 GiB: a desktop and a browser rendering while the model decides, "
                "0.35 vCPU on average; 5 GiB in use"
            ),
            seconds=4 * 3600,
            vcpus=2,
            memory_mib=8192,
            busy_vcpus=0.35,
            memory_used_mib=5120,
        ),
    )
}


def shape(name: str) -> Shape:
    found = SHAPES.get(name)
    if found is None:
        raise errors.InvalidArgument(f"unknown workload shape {name!r}; known shapes: {', '.join(SHAPES)}")
    return found
