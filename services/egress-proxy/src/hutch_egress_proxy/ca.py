"""The installation's CA, made on first start under the state folder.

<state_dir>/mitm/mitmproxy-ca.pem   private key and certificate (mode 0600, this user only)
<state_dir>/ca.pem                  the certificate alone (0644): what node-agents install
<state_dir>/upstream-ca.pem         what upstream TLS is verified against (system store + extra)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mitmproxy.certs import CertStore

from hutch.core import errors

BASENAME = "mitmproxy"  # the file names mitmproxy's certificate store reads
KEY_SIZE = 2048


@dataclass(frozen=True)
class CaFiles:
    confdir: Path
    certificate: Path
    upstream_bundle: Path


def ensure_ca(state_dir: Path, system_bundle: Path, extra_upstream: Path | None) -> CaFiles:
    confdir = state_dir / "mitm"
    confdir.mkdir(parents=True, exist_ok=True)
    os.chmod(confdir, 0o700)
    if not (confdir / f"{BASENAME}-ca.pem").exists():
        CertStore.create_store(confdir, BASENAME, KEY_SIZE, organization="Hutch", cn="Hutch egress CA")
    certificate = state_dir / "ca.pem"
    public = (confdir / f"{BASENAME}-ca-cert.pem").read_bytes()
    if not certificate.exists() or certificate.read_bytes() != public:
        tmp = certificate.with_suffix(".tmp")
        tmp.write_bytes(public)
        os.chmod(tmp, 0o644)
        tmp.replace(certificate)
    bundle = state_dir / "upstream-ca.pem"
    parts: list[bytes] = []
    for source in (system_bundle, extra_upstream):
        if source is None:
            continue
        try:
            parts.append(source.read_bytes().rstrip() + b"\n")
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot read the CA file {source}: {exc}") from exc
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(bundle)
    return CaFiles(confdir, certificate, bundle)
