import pytest

from hutch.core import errors
from hutch_gateway.preview import Grant, PreviewSite, derive_secret, sign, verify
from hutch_gateway.preview_edge import HttpError, parse_head

SITE = PreviewSite(domain="localhost", scheme="http", port=50080, secret=b"s3cret")


def test_tokens_carry_their_grant_and_expire() -> None:
    grant = Grant("tn-1", "sb-1", 8080, expires_at=2_000)
    token = sign(SITE.secret, grant)
    assert verify(SITE.secret, token, now=1_000) == grant
    with pytest.raises(errors.PermissionDenied, match="expired"):
        verify(SITE.secret, token, now=3_000)


def test_forged_or_tampered_tokens_are_refused() -> None:
    token = sign(SITE.secret, Grant("tn-1", "sb-1", 8080, 2_000))
    payload, signature = token.split(".")
    other = sign(SITE.secret, Grant("tn-2", "sb-2", 8080, 2_000)).split(".")[0]
    for bad in (f"{other}.{signature}", f"{payload}.x{signature[1:]}", "nonsense", ""):
        with pytest.raises(errors.Unauthenticated):
            verify(SITE.secret, bad, now=1_000)
    with pytest.raises(errors.Unauthenticated):
        verify(b"another secret", token, now=1_000)


def test_urls_and_hosts_round_trip() -> None:
    assert SITE.url(8080, "sb-abc", "t0k") == "http://8080-sb-abc.localhost:50080/?hutch_token=t0k"
    assert SITE.parse_host("8080-sb-abc.localhost:50080") == (8080, "sb-abc")
    assert SITE.parse_host("3000-my-agent.LOCALHOST") == (3000, "my-agent")
    for bad in ("sb-abc.localhost", "99999-sb.localhost", "8080-sb.example.com", "8080-Sb!.localhost", ""):
        with pytest.raises(errors.InvalidArgument):
            SITE.parse_host(bad)


def test_the_secret_is_derived_the_same_way_by_every_gateway() -> None:
    assert derive_secret("", "internal") == derive_secret("", "internal") != derive_secret("", "other")
    assert derive_secret("configured", "internal") == b"configured"


def test_request_heads_are_parsed_and_bad_ones_refused() -> None:
    head = parse_head(
        b"GET /x?hutch_token=abc HTTP/1.1\r\nHost: 8080-sb.localhost\r\nCookie: a=1; hutch_preview_token=c00k\r\n\r\n"
    )
    assert (head.method, head.target, head.header("host")) == ("GET", "/x?hutch_token=abc", "8080-sb.localhost")
    assert head.query_token() == "abc" and head.cookie_token() == "c00k"
    with pytest.raises(HttpError):
        parse_head(b"garbage\r\n\r\n")
