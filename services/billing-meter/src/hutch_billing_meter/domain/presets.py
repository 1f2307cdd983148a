"""Price books that mirror peers' public pricing, so an operator can see what a workload would cost
there, or bill the same way.

Every figure carries its source: the vendor's pricing page and the date of the figure, with the
grade the project's reference notes give it (shared/reference/perf-security-anchors.md §5.1):
[V] read on the vendor's own page or changelog, [S] from a third-party transcription, [U] not in
the notes at all. Where the notes give no figure the rate is 0 and says so; an operator who needs
it sets up an own book (settings: HUTCH_BILLING__PRICE_BOOKS). Vendors quote memory in "GB"; it is
taken here as GiB, the unit memory is sized in.
"""

from __future__ import annotations

from decimal import Decimal

from hutch_billing_meter.domain.pricing import Billable, CpuModel, MemoryBasis, PriceBook, Rates

_HOUR = Decimal(3600)

CLOUDFLARE = PriceBook(
    name="cloudflare",
    description="Cloudflare Containers and Sandboxes: active CPU in 10 ms units, provisioned memory and disk",
    model=CpuModel.ACTIVE,
    memory_basis=MemoryBasis.PROVISIONED,
    rates=Rates(
        # [V] $0.00002 per active vCPU-second: changelog 2025-11-21, "New CPU Pricing for Containers and Sandboxes".
        cpu_per_vcpu_second=Decimal("0.00002"),
        # [S] $0.0000025 per GiB-second of provisioned memory (third-party transcription of the pricing page).
        memory_per_gib_second=Decimal("0.0000025"),
        # [S] $0.00000007 per GB-second of provisioned disk, applied here to stored snapshots.
        storage_per_gb_hour=Decimal("0.00000007") * _HOUR,
        # No egress figure in the reference notes.
        egress_per_gb=Decimal(0),
    ),
    # [S] 10 ms billing increments.
    cpu_unit_seconds=Decimal("0.01"),
    # [S] Workers Paid includes 375 vCPU-minutes, 25 GiB-hours and 200 GB-hours a month.
    free_per_month=Billable(cpu=Decimal(375 * 60), memory=Decimal(25) * _HOUR, storage=Decimal(200)),
    source=(
        "https://developers.cloudflare.com/changelog/ (2025-11-21, CPU rate) and "
        "https://developers.cloudflare.com/containers/pricing/ (other figures, third-party transcription, 2025-11)"
    ),
)

VERCEL = PriceBook(
    name="vercel",
    description="Vercel Sandbox: active CPU in milliseconds (I/O wait excluded), provisioned memory",
    model=CpuModel.ACTIVE,
    memory_basis=MemoryBasis.PROVISIONED,
    rates=Rates(
        # [S] $0.128 per CPU-hour (Pro); active CPU model per the blog "Introducing Active CPU pricing
        # for Fluid compute" (2025-06) [V].
        cpu_per_vcpu_second=Decimal("0.128") / _HOUR,
        # [S] about $0.0106 per GB-hour of provisioned memory.
        memory_per_gib_second=Decimal("0.0106") / _HOUR,
    ),
    # [V] Vercel Sandbox meters active CPU in milliseconds.
    cpu_unit_seconds=Decimal("0.001"),
    source=(
        "https://vercel.com/pricing and the Vercel blog post 'Introducing Active CPU pricing for Fluid compute' "
        "(2025-06; rates third-party)"
    ),
)

AWS_AGENTCORE = PriceBook(
    name="aws-agentcore",
    description="AWS Bedrock AgentCore Runtime: CPU actually consumed (I/O wait free), memory at use, 128 MB minimum",
    model=CpuModel.ACTIVE,
    # [V] memory is billed on what is consumed (the peak of each second; here the per-second samples).
    memory_basis=MemoryBasis.USED,
    rates=Rates(
        # [V] $0.0895 per vCPU-hour and $0.00945 per GB-hour (aws/agent-toolkit-for-aws cost.md, "verify").
        cpu_per_vcpu_second=Decimal("0.0895") / _HOUR,
        memory_per_gib_second=Decimal("0.00945") / _HOUR,
    ),
    # [V] 128 MB memory minimum.
    memory_minimum_gib=Decimal(128) / Decimal(1024),
    source="https://aws.amazon.com/bedrock/agentcore/pricing/ (as recorded in the reference notes, 2026)",
)

E2B = PriceBook(
    name="e2b",
    description="E2B: allocated vCPU and memory per second, used or not",
    model=CpuModel.WALL_CLOCK,
    memory_basis=MemoryBasis.PROVISIONED,
    rates=Rates(
        # [V] derived from the docs' example, 8 vCPU + 4 GB = $0.468/h: $0.000014 per vCPU-second and
        # $0.0000045 per GiB-second.
        cpu_per_vcpu_second=Decimal("0.000014"),
        memory_per_gib_second=Decimal("0.0000045"),
    ),
    # [V] billed per second.
    cpu_unit_seconds=Decimal(1),
    source="https://e2b.dev/docs/billing (as recorded in the reference notes, 2026)",
)

MODAL = PriceBook(
    name="modal",
    description="Modal Sandboxes: max(request, actual) per second; in Hutch the request is also the limit",
    # [V] billed on max(request, actual); a Hutch sandbox cannot use more than it requested, so this
    # is the wall-clock model.
    model=CpuModel.WALL_CLOCK,
    memory_basis=MemoryBasis.PROVISIONED,
    rates=Rates(
        # [S] the Function rate is $0.0000131 per physical-core-second and Sandbox CPU about 3x that;
        # one Modal core is 2 vCPUs: 3 x 0.0000131 / 2 per vCPU-second.
        cpu_per_vcpu_second=Decimal("0.0000131") * 3 / 2,
        # [U] not in the reference notes: $0.00000222 per GiB-second as listed on modal.com/pricing
        # for memory; verify before relying on it.
        memory_per_gib_second=Decimal("0.00000222"),
    ),
    cpu_unit_seconds=Decimal(1),
    source=(
        "https://modal.com/pricing and https://modal.com/docs/guide/sandbox-resources (2026-08; CPU rate third-party)"
    ),
)

PRESETS: tuple[PriceBook, ...] = (CLOUDFLARE, VERCEL, AWS_AGENTCORE, E2B, MODAL)
