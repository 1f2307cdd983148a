"""Redaction of injected values from responses, whole and streamed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hutch.egress_policy import StreamRedactor, redact


def test_every_form_of_the_value_is_masked_with_its_own_length() -> None:
    secret = b"s3cr/t value"
    body = b'{"echo": "s3cr/t value", "url": "s3cr%2Ft%20value", "json": "s3cr\\/t value"}'

    out = redact(body, [secret])

    assert secret not in out
    assert b"s3cr%2Ft%20value" not in out
    assert len(out) == len(body)


def test_other_bytes_are_untouched() -> None:
    assert redact(b"nothing to see", [b"secret"]) == b"nothing to see"


def test_an_empty_secret_changes_nothing() -> None:
    assert redact(b"abc", [b""]) == b"abc"


@given(
    st.binary(min_size=4, max_size=16),
    st.lists(st.binary(max_size=40), max_size=6),
    st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_streaming_finds_values_split_across_chunks(secret: bytes, parts: list[bytes], cuts: list[int]) -> None:
    body = secret.join(parts) + secret
    chunks, rest = [], body
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)

    redactor = StreamRedactor([secret])
    streamed = b"".join(redactor.feed(chunk) for chunk in chunks) + redactor.flush()

    assert streamed == redact(body, [secret])
    assert len(streamed) == len(body)
