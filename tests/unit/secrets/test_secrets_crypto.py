"""Envelope encryption and grant rules of the secrets-broker, without a database."""

from __future__ import annotations

import base64
import os
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.core import errors
from hutch_secrets_broker.crypto import Keyring, associated_data, parse_master_keys
from hutch_secrets_broker.domain import SandboxIdentity, Selector, validate_grant

K1, K2 = os.urandom(32), os.urandom(32)
AAD = associated_data("tenant-a", "TOKEN", 1)


@given(st.binary(min_size=1, max_size=2048))
def test_a_sealed_value_opens_to_itself(value: bytes) -> None:
    ring = Keyring({"k1": K1}, "k1")

    sealed = ring.seal(value, AAD)

    assert value not in sealed.ciphertext or len(value) < 4
    assert ring.open(sealed, AAD) == value


def test_each_seal_uses_a_fresh_data_key_and_nonce() -> None:
    ring = Keyring({"k1": K1}, "k1")

    first, second = ring.seal(b"same", AAD), ring.seal(b"same", AAD)

    assert first.ciphertext != second.ciphertext
    assert first.wrapped_key != second.wrapped_key


def test_a_value_moved_to_another_tenant_or_version_does_not_open() -> None:
    ring = Keyring({"k1": K1}, "k1")
    sealed = ring.seal(b"value", AAD)

    for aad in (associated_data("tenant-b", "TOKEN", 1), associated_data("tenant-a", "TOKEN", 2)):
        with pytest.raises(errors.Internal):
            ring.open(sealed, aad)


def test_a_tampered_ciphertext_does_not_open() -> None:
    ring = Keyring({"k1": K1}, "k1")
    sealed = ring.seal(b"value", AAD)

    with pytest.raises(errors.Internal):
        ring.open(replace(sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]), AAD)


def test_rewrapping_moves_the_data_key_to_the_active_master_key_only() -> None:
    old = Keyring({"k1": K1}, "k1")
    sealed = old.seal(b"value", AAD)
    both = Keyring({"k1": K1, "k2": K2}, "k2")

    moved = both.rewrap(sealed, AAD)

    assert moved.key_id == "k2"
    assert moved.ciphertext == sealed.ciphertext
    assert Keyring({"k2": K2}, "k2").open(moved, AAD) == b"value"
    assert both.rewrap(moved, AAD) is moved


def test_a_value_under_a_removed_master_key_is_a_clear_error() -> None:
    sealed = Keyring({"k1": K1}, "k1").seal(b"value", AAD)

    with pytest.raises(errors.FailedPrecondition, match="'k1'"):
        Keyring({"k2": K2}, "k2").open(sealed, AAD)


def test_master_keys_are_parsed_from_settings() -> None:
    text = f"k1:{base64.b64encode(K1).decode()}, k2:{base64.b64encode(K2).decode()}"

    assert parse_master_keys(text) == {"k1": K1, "k2": K2}
    with pytest.raises(ValueError, match="32"):
        parse_master_keys("k1:" + base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="ID:BASE64"):
        parse_master_keys("nokey")


def test_the_active_key_must_be_configured() -> None:
    with pytest.raises(errors.FailedPrecondition):
        Keyring({"k1": K1}, "k2")


SANDBOX = SandboxIdentity("sb-aaaaaaaa", "tenant-a", "agent", {"team": "x", "env": "dev"})


@pytest.mark.parametrize(
    ("selector", "covered"),
    [
        (Selector(sandbox_ids=("sb-aaaaaaaa",)), True),
        (Selector(sandbox_names=("agent",)), True),
        (Selector(labels={"team": "x"}), True),
        (Selector(labels={"team": "x", "env": "prod"}), False),
        (Selector(sandbox_ids=("sb-bbbbbbbb",), sandbox_names=("other",)), False),
    ],
)
def test_selectors_cover_sandboxes_by_id_name_or_every_label(selector: Selector, covered: bool) -> None:
    assert selector.covers(SANDBOX) is covered


def test_a_grant_covers_its_hosts_and_ports_only() -> None:
    grant = validate_grant(
        "tenant-a", "TOKEN", Selector(sandbox_names=("agent",)), ["api.example.com:443", "*.example.org"], "", True
    )

    assert grant.covers_host("api.example.com", 443)
    assert not grant.covers_host("api.example.com", 80)
    assert grant.covers_host("a.example.org", 8443)
    assert not grant.covers_host("example.org", 443)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selector": Selector()}, "must name its sandboxes"),
        ({"hosts": []}, "must name the hosts"),
        ({"hosts": ["*"]}, "cannot cover every host"),
        ({"hosts": ["*."]}, "grant hosts"),
        ({"header": "Authorization: Bearer {value}", "placeholder": True}, "exactly one"),
        ({"header": "", "placeholder": False}, "exactly one"),
        ({"header": "Authorization: Bearer", "placeholder": False}, "{value}"),
        ({"secret": "bad name"}, "secret name"),
        ({"selector": Selector(sandbox_ids=("nope",))}, "not a sandbox id"),
    ],
)
def test_malformed_grants_are_refused(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "tenant_id": "tenant-a",
        "secret": "TOKEN",
        "selector": Selector(sandbox_names=("agent",)),
        "hosts": ["api.example.com"],
        "header": "",
        "placeholder": True,
    }
    values.update(kwargs)
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_grant(**values)  # type: ignore[arg-type]
    assert message in caught.value.message
