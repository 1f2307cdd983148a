"""A fake internet for egress tests, entirely inside this machine.

A network namespace of its own holds one /24 out of 198.18.0.0/15 (the range reserved for benchmark
networks): the host end of a veth pair takes .1, the namespace end every host's address. Servers
inside answer HTTP, HTTPS (a certificate from a test CA made on the spot), DNS and raw TCP (see
`internet_server.py`). Nothing is routed off the machine: the namespace has no other link.

    with FakeInternet(tmp_path, index=7) as net:
        net.address("allowed.test")          # '198.18.7.2'
        net.dns_server                       # '198.18.7.53'
        net.requests("allowed.test")         # what the upstream received
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_HOSTS = ("allowed.test", "denied.test", "api.example.test", "pinned.test", "other.test", "sub.allowed.test")
DNS_HOST = 53


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_test_ca(folder: Path, names: Iterable[str], addresses: Iterable[str]) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for `names` and `addresses`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Hutch test upstream CA"))
        .issuer_name(_name("Hutch test upstream CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fake internet"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class FakeInternet:
    def __init__(self, folder: Path, index: int, hosts: Iterable[str] = DEFAULT_HOSTS) -> None:
        if not 0 <= index <= 511:
            raise ValueError("index picks a /24 of 198.18.0.0/15: 0-511")
        self.folder = folder
        base = ipaddress.IPv4Address("198.18.0.0") + index * 256
        self.gateway = str(base + 1)
        self.dns_server = str(base + DNS_HOST)
        self.hosts = {name: str(base + 2 + i) for i, name in enumerate(hosts)}
        tag = uuid.uuid4().hex[:6]
        self.netns = f"hutch-inet-{tag}"
        self._link = f"hinet{tag}"
        self._records = folder / "records.json"
        self.log = folder / "requests.jsonl"
        self._process: subprocess.Popen[bytes] | None = None
        self.ca_file, self._cert, self._key = make_test_ca(
            folder / "tls", list(self.hosts), [*self.hosts.values(), self.gateway]
        )

    def address(self, name: str) -> str:
        return self.hosts[name]

    def set_dns(self, records: dict[str, list[str]]) -> None:
        """Replaces what the DNS server answers (names not given are NXDOMAIN)."""
        tmp = self._records.with_suffix(".tmp")
        tmp.write_text(json.dumps({k.lower(): v for k, v in records.items()}))
        tmp.replace(self._records)

    def default_records(self) -> dict[str, list[str]]:
        return {name: [address] for name, address in self.hosts.items()}

    def requests(self, name: str | None = None) -> list[dict[str, Any]]:
        """What the upstream servers received (all of them, or those for `name`'s address)."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        if name is None:
            return entries
        return [e for e in entries if e["address"] == self.hosts[name]]

    def __enter__(self) -> FakeInternet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.set_dns(self.default_records())
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self._link, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self._link)
            _ip("link", "set", self._link, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
            for address in [*self.hosts.values(), self.dns_server]:
                _ip("-n", self.netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", self.netns, "link", "set", "eth0", "up")
            _ip("-n", self.netns, "route", "add", "default", "via", self.gateway)
            ready = self.folder / "ready"
            config = self.folder / "server.json"
            config.write_text(
                json.dumps(
                    {
                        "log": str(self.log),
                        "cert": str(self._cert),
                        "key": str(self._key),
                        "dns": self.dns_server,
                        "records": str(self._records),
                        "ready": str(ready),
                    }
                )
            )
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "hutch.testing.internet_server", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=open(self.folder / "server.log", "wb"),  # noqa: SIM115 - the child keeps it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + 30
            while not ready.exists():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake internet did not start: {(self.folder / 'server.log').read_text()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self._link, check=False)
