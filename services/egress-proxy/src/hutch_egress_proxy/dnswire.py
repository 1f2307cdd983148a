"""Just enough of the DNS wire format (RFC 1035) for the proxy's responder and its resolver. Pure.

The responder answers one question per query: A records for names a sandbox may reach, nothing for
AAAA (sandboxes speak IPv4 only), REFUSED for anything it will not look up. The resolver sends A
queries and reads A records, following a CNAME chain inside one answer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
_HEADER = struct.Struct("!HHHHHH")
_MAX_POINTERS = 32


class DnsFormatError(ValueError):
    """A message that is not well-formed DNS."""


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    # The question section as received, echoed in the answer.
    raw_question: bytes


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise DnsFormatError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated pointer")
            jumps += 1
            if jumps > _MAX_POINTERS:
                raise DnsFormatError("pointer loop")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise DnsFormatError("unknown label type")
        offset += 1
        if length == 0:
            break
        label = data[offset : offset + length]
        if len(label) != length:
            raise DnsFormatError("label runs past the message")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length
    name = ".".join(labels).lower()
    if len(name) > 253:
        raise DnsFormatError("name too long")
    return name, (end if end >= 0 else offset)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise DnsFormatError("label too long")
            out += bytes([len(raw)]) + raw
    return bytes(out) + b"\0"


def parse_query(data: bytes) -> Question:
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a header")
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qdcount != 1:
        raise DnsFormatError("exactly one question is supported")
    name, offset = _read_name(data, _HEADER.size)
    if offset + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    return Question(ident, flags, name, qtype, qclass, data[_HEADER.size : offset + 4])


def build_response(question: Question, rcode: int, addresses: tuple[IPv4Address, ...] = (), ttl: int = 30) -> bytes:
    """An answer to `question`: A records for `addresses` (only for an A question)."""
    answers = addresses if question.qtype == TYPE_A and rcode == NOERROR else ()
    # QR, the query's opcode and RD, RA; no AA (the proxy is not the zone's authority).
    flags = 0x8000 | (question.flags & 0x7900) | 0x0080 | (rcode & 0xF)
    out = bytearray(_HEADER.pack(question.id, flags, 1, len(answers), 0, 0))
    out += question.raw_question
    for address in answers:
        out += b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, CLASS_IN, ttl, 4) + address.packed
    return bytes(out)


def build_query(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    return _HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


@dataclass(frozen=True)
class Answer:
    rcode: int
    addresses: tuple[IPv4Address, ...]
    ttl: int


def parse_answer(data: bytes, ident: int, name: str) -> Answer:
    """The A records for `name` in a response (following CNAMEs within it)."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a header")
    got_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    if got_id != ident or not flags & 0x8000:
        raise DnsFormatError("not the answer to this query")
    offset = _HEADER.size
    for _ in range(qdcount):
        _, offset = _read_name(data, offset)
        offset += 4
    wanted = {name.lower().rstrip(".")}
    addresses: list[IPv4Address] = []
    ttl = 2**31
    records: list[tuple[str, int, int, bytes, int]] = []
    for _ in range(ancount):
        owner, offset = _read_name(data, offset)
        if offset + 10 > len(data):
            raise DnsFormatError("truncated record")
        rtype, rclass, rttl, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        rdata_offset = offset
        offset += length
        if offset > len(data):
            raise DnsFormatError("record runs past the message")
        records.append((owner, rtype, rttl, data[rdata_offset:offset], rdata_offset))
    for owner, rtype, rttl, rdata, rdata_offset in records:  # CNAMEs come before what they point to
        if owner in wanted and rtype == TYPE_CNAME:
            target, _ = _read_name(data, rdata_offset)
            wanted.add(target)
            ttl = min(ttl, rttl)
        elif owner in wanted and rtype == TYPE_A and len(rdata) == 4:
            addresses.append(IPv4Address(rdata))
            ttl = min(ttl, rttl)
    return Answer(flags & 0xF, tuple(addresses), ttl if addresses else 0)
