"""The wire protocol between the node-agent and the supervisor inside each sandbox.

It is imported by both sides, so it uses nothing but the standard library (the supervisor runs on a
minimal Python runtime mounted into the sandbox; see bundle.py).

One unix-socket connection carries one operation. Everything on it is a frame:

    u32 big-endian length of what follows | u8 frame type | payload (length - 1 bytes)

The node-agent opens with REQUEST (a JSON object with "op"), then:

    exec      node-agent: STDIN*, STDIN_EOF?, SIGNAL*, RESIZE*   supervisor: STARTED, (STDOUT|STDERR|DROPPED)*, EXIT
    attach    the same as exec (DROPPED: background processes only)
    stdin     node-agent: DATA*, END                             supervisor: RESULT {}
    read      supervisor: RESULT (file info), DATA*, END {"sha256"}
    write     node-agent: DATA*, END                             supervisor: RESULT (file info with "sha256")
    watch     supervisor: RESULT {}, EVENT*                      (until the node-agent closes)
    tcp       supervisor: RESULT {}; then both sides: DATA*, END (END = no more bytes this way)
    processes, signal, list, stat, remove, rename, mkdir, ping   supervisor: RESULT
    quiesce   supervisor: RESULT {}, then closes the connection (see below)
    any       supervisor: ERROR {"code", "message"} ends the operation

Error codes are hutch.core.errors codes ("not_found", "invalid_argument", ...). If the node-agent
closes the connection of a foreground exec, the supervisor kills the process group: such a process
belongs to the call that started it. An exec with "background": true or "pty" instead outlives its
connection: it is kept in the supervisor's process table with a ring buffer of its recent output,
and any number of connections can `attach` to it (replaying the buffer, then following it live),
feed its stdin, signal it or resize its terminal; closing them never kills it. A reader that falls
more than the buffer behind skips ahead and is told how much it missed (DROPPED). An upload that ends
without END leaves no file behind.

`quiesce` prepares a gVisor sandbox for a checkpoint, which cannot save a socket bound on the host:
the supervisor closes its listener (the socket file goes away) and every other connection (their
foreground processes end as if their callers had left; background processes and terminals keep
running), answers, and closes this connection too. It listens again when PID 1 gets SIGUSR1 (the
host sends it once the checkpoint is written, and to a sandbox restored from one), or by itself
after two minutes.

The requests' fields besides "op" (file operations: see the supervisor):

    exec       "args" [str] or "cmd" str (a shell line), "env" {str: str}, "cwd", "user",
               "timeout_ms" (0: none), "stdin" bool (keep stdin open), "background" bool,
               "buffer_bytes" (background output kept: 1 to 4 MiB, default 256 KiB),
               "pty" {"cols", "rows"} (1 to 1000 each; implies background and stdin)
    attach     "pid", "replay" (default true)        stdin    "pid", "eof" (close stdin after DATA)
    signal     "pid", "signal"                       watch    "path", "recursive"
    tcp        "port", "host" (a loopback address; default "127.0.0.1")
    processes  RESULT {"processes": [{"pid", "args", "cmd" (or null), "user", "cwd", "started_at",
               "ended_at" (or null), "state" ("running"|"exited"), "exit_code", "signal" (null while
               running), "timed_out", "pty", "dropped_bytes"}]}, oldest first

Payloads that are not raw bytes are JSON objects:

    SIGNAL   {"signal": int}                 RESIZE  {"cols": int, "rows": int}
    STARTED  {"pid": int, "dropped_bytes": int (attach only: output gone before the replay)}
    DROPPED  {"bytes": int}                  EXIT    {"exit_code": int, "signal": int, "timed_out": bool}
    EVENT    {"type": "create"|"modify"|"delete"|"rename", "path": str, "is_dir": bool,
              "old_path": str (rename only)}
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
RESIZE = 7
STARTED = 10
STDOUT = 11
STDERR = 12
EXIT = 13
RESULT = 14
ERROR = 15
EVENT = 16
DROPPED = 17

HEADER = struct.Struct(">IB")
# Largest frame either side accepts; a larger length means a broken or hostile peer.
MAX_FRAME = 4 * 1024 * 1024
# Output and file data are sent in chunks of at most this size.
CHUNK = 256 * 1024

SOCKET_NAME = "supervisor.sock"
# The signal (as runtimes' kill commands name it) that makes a quiesced supervisor listen again.
RELISTEN_SIGNAL = "USR1"


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
