"""Encryption at rest: objects decrypt only with their tenant's key, at their own place, unaltered."""

from __future__ import annotations

import os

import pytest

from hutch_snapshot_store.domain.crypto import (
    DecryptionFailed,
    ObjectCipher,
    master_key_id,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)

HASH_A, HASH_B = "a" * 64, "b" * 64


def test_round_trip_and_fresh_nonces() -> None:
    cipher = ObjectCipher("tn-1", new_data_key())
    first, second = cipher.encrypt(HASH_A, b"chunk bytes"), cipher.encrypt(HASH_A, b"chunk bytes")
    assert first != second
    assert cipher.decrypt(HASH_A, first) == cipher.decrypt(HASH_A, second) == b"chunk bytes"


def test_tampering_is_detected() -> None:
    cipher = ObjectCipher("tn-1", new_data_key())
    blob = bytearray(cipher.encrypt(HASH_A, os.urandom(1000)))
    blob[100] ^= 1
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(HASH_A, bytes(blob))
    with pytest.raises(DecryptionFailed, match="format"):
        cipher.decrypt(HASH_A, b"\x02" + bytes(blob[1:]))


def test_an_object_moved_elsewhere_does_not_decrypt() -> None:
    key = new_data_key()
    blob = ObjectCipher("tn-1", key).encrypt(HASH_A, b"secret")
    with pytest.raises(DecryptionFailed):
        ObjectCipher("tn-1", key).decrypt(HASH_B, blob)
    # Even with the same key, another tenant's path does not authenticate.
    with pytest.raises(DecryptionFailed):
        ObjectCipher("tn-2", key).decrypt(HASH_A, blob)
    with pytest.raises(DecryptionFailed):
        ObjectCipher("tn-1", new_data_key()).decrypt(HASH_A, blob)


def test_data_keys_unwrap_only_for_their_tenant_and_master() -> None:
    master, other = os.urandom(32), os.urandom(32)
    data_key = new_data_key()
    wrapped = wrap_data_key(master, "tn-1", data_key)
    assert unwrap_data_key(master, "tn-1", wrapped) == data_key
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(master, "tn-2", wrapped)
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(other, "tn-1", wrapped)
    assert master_key_id(master) != master_key_id(other) and len(master_key_id(master)) == 16
