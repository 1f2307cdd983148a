"""Preview URLs: host names that name a sandbox's port, and the signed tokens that open them. Pure.

`http://8080-sb-abc123.localhost:50080/` reaches port 8080 of sandbox sb-abc123 (an id or, with an
API key, a name). A token names the tenant, the sandbox and the port it opens, and when it stops
working, signed with HMAC-SHA256 under the installation's preview secret:
`<payload>.<signature>`, both base64url.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

from hutch.core import errors

MAX_LIFETIME_S = 30 * 24 * 3600
DEFAULT_LIFETIME_S = 3600
_HOST_LABEL = re.compile(r"^(\d{1,5})-([a-z0-9][a-z0-9-]{0,62})$")


@dataclass(frozen=True)
class PreviewSite:
    """Where the preview edge answers, as URLs handed out name it."""

    domain: str
    scheme: str
    port: int
    secret: bytes

    def host(self, port: int, sandbox_id: str) -> str:
        return f"{port}-{sandbox_id}.{self.domain}"

    def url(self, port: int, sandbox_id: str, token: str) -> str:
        default = {"http": 80, "https": 443}.get(self.scheme)
        netloc = self.host(port, sandbox_id) + ("" if self.port == default else f":{self.port}")
        return f"{self.scheme}://{netloc}/" + (f"?{TOKEN_PARAMETER}={token}" if token else "")

    def parse_host(self, host_header: str) -> tuple[int, str]:
        """(port, sandbox id or name) from a Host header; InvalidArgument when it is not one of ours."""
        host = host_header.strip().lower().rsplit(":", 1)[0] if not host_header.startswith("[") else ""
        label, _, domain = host.partition(".")
        match = _HOST_LABEL.match(label)
        if domain != self.domain or match is None or not 1 <= int(match[1]) <= 65535:
            raise errors.InvalidArgument(
                f"{host_header!r} is not a preview host: use PORT-SANDBOX.{self.domain} "
                f"(e.g. 8080-sb-abc.{self.domain})"
            )
        return int(match[1]), match[2]


TOKEN_PARAMETER = "hutch_token"


@dataclass(frozen=True)
class Grant:
    tenant_id: str
    sandbox_id: str
    port: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, grant: Grant) -> str:
    payload = _b64(json.dumps([grant.tenant_id, grant.sandbox_id, grant.port, grant.expires_at]).encode())
    signature = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def verify(secret: bytes, token: str, now: float | None = None) -> Grant:
    """The grant a token carries; raises Unauthenticated (forged, malformed) or PermissionDenied (expired)."""
    payload, _, signature = token.partition(".")
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        raise errors.Unauthenticated("the preview token is not valid")
    try:
        tenant_id, sandbox_id, port, expires_at = json.loads(_unb64(payload))
        grant = Grant(str(tenant_id), str(sandbox_id), int(port), int(expires_at))
    except (ValueError, TypeError) as exc:
        raise errors.Unauthenticated("the preview token is malformed") from exc
    if grant.expires_at < (now if now is not None else time.time()):
        raise errors.PermissionDenied("the preview token has expired: ask for a new preview URL")
    return grant


def derive_secret(configured: str, internal_token: str) -> bytes:
    """The configured secret, or one derived from the internal token (so every gateway agrees)."""
    if configured:
        return configured.encode()
    return hmac.new(internal_token.encode(), b"hutch preview tokens", hashlib.sha256).digest()
