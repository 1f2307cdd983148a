"""The cross-region index's pure parts: which keys a reference is looked up under, and the cache of
lookups that found a sandbox elsewhere."""

from __future__ import annotations

from hutch_gateway.region_index import FoundCache, Located, _keys, _valid_ref, index_bucket


def test_each_region_has_a_bucket_named_after_it() -> None:
    assert index_bucket("us-east") == "sandbox_index_us_east"


def test_an_id_is_looked_up_as_an_id_first_and_a_name_as_a_name_first() -> None:
    assert _keys("tn-a", "sb-123") == ["tn-a.id.sb-123", "tn-a.name.sb-123"]
    assert _keys("tn-a", "web") == ["tn-a.name.web", "tn-a.id.web"]


def test_references_that_cannot_be_keys_are_never_looked_up() -> None:
    assert _valid_ref("sb-abc") and _valid_ref("my-box-2")
    for bad in ("", "a.b", "a*", "a>", "über", "a b"):
        assert not _valid_ref(bad), bad


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_id_stays_cached_and_a_name_only_briefly() -> None:
    clock = Clock()
    cache = FoundCache(clock)
    there = Located("us-east", "sb-1", 1.0)
    cache.put(("tn-a", "sb-1"), there, by_id=True)
    cache.put(("tn-a", "web"), there, by_id=False)
    clock.now = FoundCache.NAME_TTL_S - 0.1
    assert cache.get(("tn-a", "web")) == there
    clock.now = FoundCache.NAME_TTL_S
    assert cache.get(("tn-a", "web")) is None
    clock.now = 1e9
    assert cache.get(("tn-a", "sb-1")) == there


def test_tenants_do_not_share_entries() -> None:
    cache = FoundCache(Clock())
    cache.put(("tn-a", "sb-1"), Located("us-east", "sb-1", 1.0), by_id=True)
    assert cache.get(("tn-b", "sb-1")) is None


def test_the_least_recently_used_entry_goes_when_full() -> None:
    cache = FoundCache(Clock())
    cache.MAX_ENTRIES = 2
    for n in range(2):
        cache.put(("t", f"sb-{n}"), Located("r", f"sb-{n}", 1.0), by_id=True)
    assert cache.get(("t", "sb-0")) is not None  # now the most recent
    cache.put(("t", "sb-2"), Located("r", "sb-2", 1.0), by_id=True)
    assert cache.get(("t", "sb-1")) is None
    assert cache.get(("t", "sb-0")) is not None and cache.get(("t", "sb-2")) is not None
