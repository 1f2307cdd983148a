"""The wire protocol between the node-agent and the supervisor inside each sandbox.

It is imported by both sides, so it uses nothing but the standard library (the supervisor runs on a
minimal Python runtime mounted into the sandbox; see bundle.py).

One unix-socket connection carries one operation. Everything on it is a frame:

    u32 big-endian length of what follows | u8 frame type | payload (length - 1 bytes)

The node-agent opens with REQUEST (a JSON object with "op"), then:

    exec    node-agent: STDIN*, STDIN_EOF?, SIGNAL*      supervisor: STARTED, (STDOUT|STDERR)*, EXIT
    read    supervisor: RESULT (file info), DATA*, END
    write   node-agent: DATA*, END                       supervisor: RESULT (file info)
    list, stat, remove, rename, mkdir, ping               supervisor: RESULT
    any     supervisor: ERROR {"code", "message"} ends the operation

Error codes are hutch.core.errors codes ("not_found", "invalid_argument", ...). If the node-agent
closes the connection during exec, the supervisor kills the process group: a process belongs to the
call that started it. An upload that ends without END leaves no file behind.
"""

from __future__ import annotations

import json
import struct

REQUEST = 1
STDIN = 2
STDIN_EOF = 3
SIGNAL = 4
DATA = 5
END = 6
STARTED = 10
STDOUT = 11
STDERR = 12
EXIT = 13
RESULT = 14
ERROR = 15

HEADER = struct.Struct(">IB")
# Largest frame either side accepts; a larger length means a broken or hostile peer.
MAX_FRAME = 4 * 1024 * 1024
# Output and file data are sent in chunks of at most this size.
CHUNK = 256 * 1024

SOCKET_NAME = "supervisor.sock"


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(frame_type: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + 1, frame_type) + payload


def encode_json(frame_type: int, value: object) -> bytes:
    return encode(frame_type, json.dumps(value, separators=(",", ":")).encode())


def parse_header(header: bytes) -> tuple[int, int]:
    """Returns (frame type, payload length) for a 5-byte header."""
    length, frame_type = HEADER.unpack(header)
    if length < 1 or length - 1 > MAX_FRAME:
        raise ProtocolError(f"frame length {length} out of range")
    return frame_type, length - 1
