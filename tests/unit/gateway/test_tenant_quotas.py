"""Per-tenant concurrency quotas: the arithmetic and the messages."""

import pytest

from hutch.core import errors
from hutch_gateway.quotas import Quota, Usage, check


def test_nothing_set_means_no_limit() -> None:
    check(Quota(), Usage(10_000, 10_000_000, 10_000_000), 100, 16_000, 65_536)


def test_a_tenants_own_limit_wins_over_the_default_field_by_field() -> None:
    assert Quota(sandboxes=5).over(Quota(sandboxes=50, memory_mb=4096)) == Quota(5, 0, 4096)


def test_the_last_sandbox_that_fits_is_allowed_and_the_next_is_refused() -> None:
    quota = Quota(sandboxes=3)
    check(quota, Usage(2, 2000, 1024), 1, 1000, 512)
    with pytest.raises(errors.ResourceExhausted, match="allows 3 sandboxes at once and 3 are running"):
        check(quota, Usage(3, 3000, 1536), 1, 1000, 512)
    with pytest.raises(errors.ResourceExhausted, match="allows 3 sandboxes"):
        check(quota, Usage(1, 1000, 512), 3, 1000, 512)  # a fork of three


@pytest.mark.parametrize(
    ("quota", "message"),
    [
        (Quota(cpu_millis=4000), "allows 4 vCPUs at once; running sandboxes hold 3.5 and this needs 1 more"),
        (Quota(memory_mb=2048), "allows 2048 MB of memory at once; running sandboxes hold 1800 MB and this needs 512"),
    ],
)
def test_cpu_and_memory_are_summed_over_live_sandboxes(quota: Quota, message: str) -> None:
    with pytest.raises(errors.ResourceExhausted, match=message):
        check(quota, Usage(4, 3500, 1800), 1, 1000, 512)
