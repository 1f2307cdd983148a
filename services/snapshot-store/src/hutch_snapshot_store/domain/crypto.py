"""Encryption at rest: a data key per tenant encrypts that tenant's objects; a master key wraps the
data keys.

* Objects: AES-256-GCM with a random 96-bit nonce per object; the associated data names the tenant
  and the chunk hash, so an object copied under another tenant's (or another chunk's) key path, or
  altered in any bit, fails to decrypt instead of yielding wrong bytes.
  Layout: version byte, nonce, ciphertext with its 16-byte tag.
* Data keys: 32 random bytes, wrapped with AES-256-GCM under the master key, the tenant id as
  associated data (a wrapped key moved to another tenant's row does not unwrap). Each row records the
  id of the master key that wrapped it, so rotation can tell which rows still need re-wrapping.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hutch.core import errors

KEY_BYTES = 32
_NONCE_BYTES = 12
_OBJECT_VERSION = b"\x01"
_OBJECT_AAD = b"hutch/snapshot-chunk/v1\x00"
_KEY_AAD = b"hutch/tenant-data-key/v1\x00"


class DecryptionFailed(errors.Internal):
    """Stored bytes did not authenticate: wrong key, wrong place, or altered."""


def master_key_id(master_key: bytes) -> str:
    """A short public name for a master key (a hash of it, never the key)."""
    return hashlib.sha256(b"hutch-master-key-id\x00" + master_key).hexdigest()[:16]


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def wrap_data_key(master_key: bytes, tenant_id: str, data_key: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, data_key, _KEY_AAD + tenant_id.encode())


def unwrap_data_key(master_key: bytes, tenant_id: str, wrapped: bytes) -> bytes:
    try:
        key = AESGCM(master_key).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _KEY_AAD + tenant_id.encode())
    except InvalidTag:
        raise DecryptionFailed(f"the data key of tenant {tenant_id!r} does not unwrap with this master key") from None
    if len(key) != KEY_BYTES:
        raise DecryptionFailed(f"the data key of tenant {tenant_id!r} has the wrong length")
    return key


def _object_aad(tenant_id: str, chunk_hash: str) -> bytes:
    return _OBJECT_AAD + tenant_id.encode() + b"\x00" + chunk_hash.encode()


class ObjectCipher:
    """Encrypts and decrypts one tenant's objects. Thread-safe: the minio threads use it directly."""

    def __init__(self, tenant_id: str, data_key: bytes) -> None:
        self.tenant_id = tenant_id
        self._aead = AESGCM(data_key)

    def encrypt(self, chunk_hash: str, plain: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _OBJECT_VERSION + nonce + self._aead.encrypt(nonce, plain, _object_aad(self.tenant_id, chunk_hash))

    def decrypt(self, chunk_hash: str, blob: bytes) -> bytes:
        if blob[:1] != _OBJECT_VERSION or len(blob) < 1 + _NONCE_BYTES + 16:
            raise DecryptionFailed(f"object of chunk {chunk_hash} is not in a known format")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, _object_aad(self.tenant_id, chunk_hash))
        except InvalidTag:
            raise DecryptionFailed(
                f"object of chunk {chunk_hash} does not authenticate for tenant {self.tenant_id!r}"
            ) from None


def encrypted_size(plain_size: int) -> int:
    return plain_size + 1 + _NONCE_BYTES + 16
