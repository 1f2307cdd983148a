"""Envelope encryption of secret values. Pure: no I/O.

Every version of a secret gets its own random 256-bit data key; the value is sealed with AES-256-GCM
under that key, and the data key is wrapped (AES-256-GCM again) under a master key from the
settings. Both carry the secret's identity as associated data, so a sealed value copied into another
tenant's or secret's row fails to open. Rotating the master key re-wraps data keys only: values are
never decrypted for it, and rows under the old key keep opening while both keys are configured.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hutch.core import errors

KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    wrap_nonce: bytes
    key_id: str


def associated_data(tenant_id: str, name: str, version: int) -> bytes:
    return f"hutch-secret\0{tenant_id}\0{name}\0{version}".encode()


def parse_master_keys(text: str) -> dict[str, bytes]:
    """ "k1:BASE64,k2:BASE64" -> {id: 32-byte key}; raises ValueError naming the bad entry."""
    keys: dict[str, bytes] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key_id, colon, encoded = item.partition(":")
        if not colon or not key_id:
            raise ValueError(f"master key entries are ID:BASE64 (got {item[:8]}...)")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise ValueError(f"master key {key_id!r} is not base64") from exc
        if len(key) != KEY_BYTES:
            raise ValueError(f"master key {key_id!r} holds {len(key)} bytes; it must hold {KEY_BYTES} (AES-256)")
        keys[key_id] = key
    return keys


class Keyring:
    """The master keys this process knows; new data keys are wrapped under `active`."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise errors.FailedPrecondition(f"the active master key {active!r} is not among the configured keys")
        self._keys = dict(keys)
        self.active = active

    def seal(self, value: bytes, aad: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, value, aad)
        wrapped, wrap_nonce = self._wrap(data_key, aad, self.active)
        return Sealed(ciphertext, nonce, wrapped, wrap_nonce, self.active)

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        data_key = self._unwrap(sealed, aad)
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise errors.Internal("a secret's value does not authenticate: its row was altered") from None

    def rewrap(self, sealed: Sealed, aad: bytes) -> Sealed:
        """The same value under the active master key (the ciphertext is untouched)."""
        if sealed.key_id == self.active:
            return sealed
        wrapped, wrap_nonce = self._wrap(self._unwrap(sealed, aad), aad, self.active)
        return Sealed(sealed.ciphertext, sealed.nonce, wrapped, wrap_nonce, self.active)

    def _wrap(self, data_key: bytes, aad: bytes, key_id: str) -> tuple[bytes, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return AESGCM(self._keys[key_id]).encrypt(nonce, data_key, aad + b"\0" + key_id.encode()), nonce

    def _unwrap(self, sealed: Sealed, aad: bytes) -> bytes:
        master = self._keys.get(sealed.key_id)
        if master is None:
            raise errors.FailedPrecondition(
                f"a secret is wrapped under master key {sealed.key_id!r}, which is not configured any more"
            )
        try:
            return AESGCM(master).decrypt(sealed.wrap_nonce, sealed.wrapped_key, aad + b"\0" + sealed.key_id.encode())
        except InvalidTag:
            raise errors.Internal("a secret's data key does not authenticate: its row was altered") from None
