"""The servers of a fake internet; runs inside its network namespace (see `internet.py`).

    python -m hutch.testing.internet_server CONFIG.json

* HTTP on port 80 and HTTPS on 443 of every address: `/echo` answers what arrived (address,
  method, path, headers, body) as JSON; `/bytes/N` sends N bytes; every request is appended to the
  log as one JSON line before it is answered;
* DNS on port 53 of the DNS address: A records from a JSON file, read again for every query (a
  test rewrites it to rebind a name), with a TTL of one second;
* raw TCP on port 7000: a banner, then an echo of every line.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK = 256 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers (40 ms), and every timing through this server with it.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _record(self, body: bytes) -> dict[str, Any]:
        entry = {
            "address": self.connection.getsockname()[0],
            "port": self.connection.getsockname()[1],
            "tls": isinstance(self.connection, ssl.SSLSocket),
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        line = json.dumps(entry) + "\n"
        with self.server.log_lock, open(self.server.log_path, "a") as log:
            log.write(line)
        return entry

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = self._record(body)
        if self.path.startswith("/bytes/"):
            size = int(self.path.split("/")[2].split("?")[0])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(size))
            self.end_headers()
            block = b"x" * CHUNK
            left = size
            while left > 0:
                piece = block[: min(left, CHUNK)]
                self.wfile.write(piece)
                left -= len(piece)
            return
        payload = json.dumps(entry).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        # Echo the Authorization header back in a header too: redaction must catch both.
        if self.headers.get("authorization"):
            self.send_header("x-echo-authorization", self.headers["authorization"])
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    log_path: Path
    log_lock: threading.Lock


class _RawHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"HUTCH-RAW ready\n")
        for line in self.rfile:
            self.wfile.write(b"echo " + line)


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _dns_answer(query: bytes, records: dict[str, list[str]]) -> bytes | None:
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", query)
    offset, labels = 12, []
    while offset < len(query) and query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    offset += 1
    qtype = struct.unpack_from("!H", query, offset)[0]
    question = query[12 : offset + 4]
    name = ".".join(labels).lower()
    addresses = records.get(name)
    if addresses is None:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    answers = [a for a in addresses] if qtype == 1 else []
    out = struct.pack("!HHHHHH", ident, 0x8180, 1, len(answers), 0, 0) + question
    for address in answers:
        out += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(address)
    return out


def _serve_dns(address: str, records_file: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            records = json.loads(records_file.read_text())
            reply = _dns_answer(data, records)
        except (OSError, ValueError, struct.error):
            continue
        if reply is not None:
            sock.sendto(reply, peer)


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    log_path = Path(config["log"])
    lock = threading.Lock()
    servers: list[_Server] = []
    plain = _Server(("0.0.0.0", 80), _Handler)
    secure = _Server(("0.0.0.0", 443), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["cert"], config["key"])
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        server.log_path = log_path
        server.log_lock = lock
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    raw = _RawServer(("0.0.0.0", 7000), _RawHandler)
    threading.Thread(target=raw.serve_forever, daemon=True).start()
    threading.Thread(target=_serve_dns, args=(config["dns"], Path(config["records"])), daemon=True).start()
    Path(config["ready"]).write_text("ready")
    threading.Event().wait()


if __name__ == "__main__":
    main()
