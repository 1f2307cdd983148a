import pytest

from hutch.core import errors
from hutch_gateway.auth import Authenticator, hash_key, key_from_metadata, new_api_key


def test_keys_are_random_and_prefixed() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("hk_") and len(a) >= 32


def test_key_is_read_from_bearer_or_x_api_key() -> None:
    assert key_from_metadata([("authorization", "Bearer hk_abc")]) == "hk_abc"
    assert key_from_metadata([("x-api-key", "hk_def")]) == "hk_def"
    assert key_from_metadata([("other", "x")]) == ""


async def test_lookup_is_cached_and_unknown_keys_are_refused() -> None:
    key = new_api_key()
    calls: list[str] = []

    async def lookup(digest: str) -> str | None:
        calls.append(digest)
        return "tn-1" if digest == hash_key(key) else None

    auth = Authenticator(lookup, cache_s=60)
    assert await auth.tenant(key) == "tn-1"
    assert await auth.tenant(key) == "tn-1"
    assert len(calls) == 1
    with pytest.raises(errors.Unauthenticated, match="not valid"):
        await auth.tenant(new_api_key())
    with pytest.raises(errors.Unauthenticated, match="no API key"):
        await auth.tenant("")
    with pytest.raises(errors.Unauthenticated, match="malformed"):
        await auth.tenant("sk-live-123")
