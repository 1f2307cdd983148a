"""The supervisor: PID 1 of every sandbox.

It listens on the unix socket named by HUTCH_SUPERVISOR_SOCKET and serves one operation per
connection with the frames defined in protocol.py: it runs processes (exec, in the foreground, in the
background or on a terminal; attach, stdin, signal, processes), works on files (read, write, list,
stat, remove, rename, mkdir, watch) and relays TCP connections to the sandbox's loopback (tcp), all
from inside the sandbox's own namespaces, so paths, users and ports are the sandbox's. As PID 1 it
also reaps every process that exits in the sandbox, including orphans re-parented to it.

It runs on the private runtime built by bundle.py, which copies exactly the modules this file
imports (plus ON_DEMAND_MODULES): it uses nothing but the standard library. The sandbox is ready
once this listens, so startup stays lean: no asyncio, no OpenSSL until the first file transfer, one
thread per connection (two for a tcp relay) plus one reaper thread, and one thread that collects the
output of background processes, started with the first of them.

Processes are started with fork + exec rather than subprocess, whose own waitpid would race the
reaper. A process runs in its own session and process group; signals, timeouts and a closed
connection act on the whole group.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import grp
import json
import os
import pwd
import select
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

try:
    from . import protocol
except ImportError:  # run as a script: the bundle puts protocol.py next to this file
    import protocol  # type: ignore[no-redef, import-not-found]

# Imported on first use, not at start: hashlib loads OpenSSL's libcrypto (about 2.5 ms of a ~20 ms
# start, more under gVisor), which only file transfers need; its SHA-256 is three times faster than
# the interpreter's own. bundle.py ships these modules too.
ON_DEMAND_MODULES = ("hashlib",)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MAX_LIST_ENTRIES = 10000
PROTOCOL_VERSION = 2
# When the supervisor has no children the reaper sleeps this long between checks; a process that
# joined the sandbox from outside (crun exec) and was orphaned is reaped within this delay.
IDLE_REAP_INTERVAL_S = 1.0
# After the main process exits, at most this many chunks per stream are still forwarded: output
# already in the pipe belongs to the call, a grandchild that keeps writing does not.
DRAIN_CHUNKS = 16
# How long a finished connection waits for the node-agent to close its side (see linger()).
LINGER_S = 5.0
# Output kept for each background process (exec "buffer_bytes"): the default and the most allowed.
DEFAULT_OUTPUT_BUFFER = 256 * 1024
MAX_OUTPUT_BUFFER = 4 * 1024 * 1024
# Background processes that have exited stay listed (and attachable) until this many newer ones
# have; their output is let go first, oldest first, once together it exceeds the second figure.
MAX_FINISHED_PROCESSES = 100
MAX_FINISHED_OUTPUT = 16 * 1024 * 1024
# After a background process exits, its output is still collected for this long: a terminal hands
# over what the process wrote just before it exited a little later than a pipe does.
EXIT_DRAIN_S = 0.1
# A connection blocked writing to a process's full stdin checks this often whether the process has
# exited or the connection has gone (gVisor does not report POLLRDHUP).
INPUT_RECHECK_MS = 500
MAX_TERMINAL_SIZE = 1000
DEFAULT_TERM = "xterm-256color"
# How long the probe of the first terminal waits for the signals a kernel sends at once if at all.
TERMINAL_PROBE_WAIT_S = 0.1
# accept() errors that say "not now" rather than "this socket is broken".
TRANSIENT_ACCEPT_ERRORS = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
}
SUPERVISOR_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# After `quiesce` the supervisor listens again when the host sends this signal to PID 1 (once the
# checkpoint is written, or in the sandbox restored from it), or by itself after QUIESCE_MAX_S, so a
# host that died half-way never leaves it deaf for good.
RELISTEN_SIGNAL = signal.Signals["SIG" + protocol.RELISTEN_SIGNAL]
QUIESCE_MAX_S = 120.0
# How long quiesce waits for the other connections' threads to let go of their sockets.
QUIESCE_DRAIN_S = 5.0
# exec keeps ignored dispositions: Python ignores SIGPIPE and SIGXFSZ, the supervisor ignores the
# above and may inherit more, so a started process gets every default back explicitly.
CHILD_RESET_SIGNALS = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
TEMP_FILE_MODE = 0o600
NEW_FILE_MODE = 0o644
NEW_DIRECTORY_MODE = 0o755

ERRNO_CODES = {
    errno.ENOENT: "not_found",
    errno.EEXIST: "already_exists",
    errno.ENOTDIR: "invalid_argument",
    errno.EISDIR: "invalid_argument",
    errno.EINVAL: "invalid_argument",
    errno.ENAMETOOLONG: "invalid_argument",
    errno.ELOOP: "invalid_argument",
    errno.ENXIO: "invalid_argument",
    errno.ENOEXEC: "invalid_argument",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ENOSPC: "resource_exhausted",
    errno.EDQUOT: "resource_exhausted",
    errno.EFBIG: "resource_exhausted",
    errno.EAGAIN: "resource_exhausted",
    errno.EMFILE: "resource_exhausted",
    errno.ENOTEMPTY: "failed_precondition",
    errno.EBUSY: "failed_precondition",
    errno.EXDEV: "failed_precondition",
}
ERRNO_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENXIO: "it is a socket or a device without a reader",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is too large",
    errno.EAGAIN: "the sandbox's process limit is reached",
    errno.EMFILE: "too many open files",
    errno.ENOTEMPTY: "the directory is not empty",
    errno.EBUSY: "it is in use, for example as a mount point",
    errno.EXDEV: "source and destination are on different file systems",
}


class OpError(Exception):
    """Ends an operation with an ERROR frame carrying a hutch.core.errors code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConnectionClosed(Exception):
    """The node-agent closed the connection."""


class TooManyEntries(Exception):
    """A listing reached its entry limit."""


def invalid(message: str) -> OpError:
    return OpError("invalid_argument", message)


def describe_os_error(err: OSError) -> str:
    if err.errno in ERRNO_REASONS:
        return ERRNO_REASONS[err.errno]
    return (err.strerror or str(err)).lower()


def fs_error(err: OSError, action: str) -> OpError:
    """Turns an OSError into an OpError; `action` names what failed, e.g. "read '/etc/x'"."""
    code = ERRNO_CODES.get(err.errno or 0, "internal")
    return OpError(code, f"cannot {action}: {describe_os_error(err)}")


def log(message: str) -> None:
    sys.stderr.write(f"hutch-supervisor: {message}\n")


# Frames ------------------------------------------------------------------------------------------


def receive_exactly(conn: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = conn.recv_into(view[received:], size - received, socket.MSG_WAITALL)
        if not count:
            raise ConnectionClosed
        received += count
    return bytes(buffer)


def receive_frame(conn: socket.socket) -> tuple[int, bytes]:
    frame_type, length = protocol.parse_header(receive_exactly(conn, protocol.HEADER.size))
    return frame_type, receive_exactly(conn, length) if length else b""


def send_frame(conn: socket.socket, frame_type: int, payload: bytes = b"") -> None:
    conn.sendall(protocol.encode(frame_type, payload))


def send_json(conn: socket.socket, frame_type: int, value: object) -> None:
    frame = protocol.encode_json(frame_type, value)
    if len(frame) - protocol.HEADER.size > protocol.MAX_FRAME:
        raise OpError("resource_exhausted", f"the answer is larger than the {protocol.MAX_FRAME}-byte frame limit")
    conn.sendall(frame)


def send_error(conn: socket.socket, code: str, message: str) -> None:
    """Sends ERROR unless the connection is already gone (then nobody is left to tell)."""
    try:
        send_json(conn, protocol.ERROR, {"code": code, "message": message})
    except OSError:
        pass


def decode_object(payload: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise invalid(f"the {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid(f"the {what} must be a JSON object")
    return value


def receive_request(conn: socket.socket) -> dict[str, object]:
    frame_type, payload = receive_frame(conn)
    if frame_type != protocol.REQUEST:
        raise invalid(f"a connection must start with a REQUEST frame, got frame type {frame_type}")
    request = decode_object(payload, "request")
    if not isinstance(request.get("op"), str):
        raise invalid('the request has no "op" string')
    return request


# Request arguments -------------------------------------------------------------------------------


def string_arg(request: dict[str, object], name: str, default: str = "") -> str:
    value = request.get(name, default)
    if not isinstance(value, str):
        raise invalid(f'"{name}" must be a string')
    if "\0" in value:
        raise invalid(f'"{name}" must not contain NUL bytes')
    return value


def int_arg(request: dict[str, object], name: str, default: int, minimum: int) -> int:
    value = request.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f'"{name}" must be an integer')
    if value < minimum:
        raise invalid(f'"{name}" must be at least {minimum}, got {value}')
    return value


def bool_arg(request: dict[str, object], name: str, default: bool = False) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f'"{name}" must be true or false')
    return value


def user_home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir or "/"
    except (KeyError, ValueError):
        return "/"


def resolve_path(raw: object, base: str, name: str = "path") -> str:
    """Makes `raw` absolute (relative to `base`) and normal; rejects what no file system accepts."""
    if not isinstance(raw, str) or not raw:
        raise invalid(f'"{name}" must be a non-empty string')
    if "\0" in raw:
        raise invalid(f'"{name}" must not contain NUL bytes')
    try:
        raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise invalid(f'"{name}" is not a valid file name') from None
    path = os.path.normpath(os.path.join(base, raw))
    # normpath keeps a leading "//" (POSIX leaves its meaning open); Linux treats it as "/".
    return "/" + path.lstrip("/")


# File information --------------------------------------------------------------------------------


class OwnerNames:
    """uid/gid to name lookups, cached for the length of one operation (a list asks many times)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = str(uid)
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = str(gid)
        return self._groups[gid]


def file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def file_info(path: str, st: os.stat_result, names: OwnerNames, symlink_target: str = "") -> dict[str, object]:
    return {
        "path": path,
        "name": os.path.basename(path) or "/",
        "type": file_type(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "symlink_target": symlink_target,
    }


def lstat_info(path: str, names: OwnerNames) -> dict[str, object]:
    """Info about `path` itself: a symlink is reported as a symlink, with its target."""
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return file_info(path, st, names, target)


# Users and directories ---------------------------------------------------------------------------


class Account:
    """A user of the sandbox, looked up in the sandbox's own /etc/passwd and /etc/group."""

    def __init__(self, name: str, uid: int, gid: int, groups: list[int], home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home


MAX_UID = 2**32 - 2


def find_account(user: str) -> Account:
    """Looks up a user name or a numeric uid; an unknown name is not_found.

    A numeric uid without an account runs as that uid with the same gid and no home, as container
    runtimes do for `--user 1234`.
    """
    numeric = user.isascii() and user.isdigit()
    try:
        entry = pwd.getpwuid(int(user)) if numeric else pwd.getpwnam(user)
    except (KeyError, ValueError, OverflowError):
        if numeric and int(user) <= MAX_UID:
            return Account(user, int(user), int(user), [int(user)], "/")
        raise OpError("not_found", f"user {user!r} does not exist in the sandbox") from None
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


def make_directories(path: str, owner: Account | None = None) -> bool:
    """Creates `path` and its missing parents (like mkdir -p), owned by `owner` (default root).

    Returns False when `path` already was a directory. Raises FileExistsError when `path` is
    something else, NotADirectoryError when one of its parents is.
    """
    missing = []
    existing = path
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        if existing == path:
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", path)
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", existing)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, NEW_DIRECTORY_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # created concurrently
        if owner is not None:
            os.chown(directory, owner.uid, owner.gid)
    return bool(missing)


def remove_tree(parent_fd: int, name: str) -> None:
    """Removes directory `name` (relative to `parent_fd`) and its contents, never following a symlink.

    Working through directory fds means a symlink swapped in midway cannot redirect the removal.
    """
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


# Processes ---------------------------------------------------------------------------------------


class ExitNotice:
    """Carries one child's wait status from the reaper to the thread serving its connection.

    A pipe rather than an Event, so the exec relay can wait for it in the same poll() as the
    process's output and the node-agent's frames. The reaper only writes to it; the connection's
    thread owns both ends and closes them once the status has arrived.
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        self.status = 0
        self._received = False

    def deliver(self, status: int) -> None:
        self.status = status
        os.write(self._write_fd, b"\0")

    def wait(self) -> int:
        """Blocks until the status is delivered (returns at once if it already was)."""
        if not self._received:
            os.read(self.fd, 1)
            self._received = True
        return self.status

    def close(self) -> None:
        close_fds(self.fd, self._write_fd)


class Reaper:
    """Reaps every process that exits in the sandbox and hands the status of the processes the
    supervisor started to the connection that started them.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._notices: dict[int, ExitNotice] = {}
        self._starts = 0

    def start(self, fork: Callable[[], int]) -> tuple[int, ExitNotice]:
        """Runs `fork` (which returns the new pid) and registers the pid for its exit status."""
        notice = ExitNotice()
        # Forking and registering under the lock, which the reaper takes before it looks a pid up,
        # means a process that exits at once can never be reaped before it is registered.
        with self._changed:
            try:
                pid = fork()
            except BaseException:
                notice.close()
                raise
            self._notices[pid] = notice
            self._starts += 1
            self._changed.notify()
        return pid, notice

    def run(self) -> None:
        while True:
            try:
                self._reap_one()
            except Exception as err:  # the reaper must outlive any surprise
                log(f"reaper: {err!r}")
                time.sleep(0.1)

    def _reap_one(self) -> None:
        with self._changed:
            starts = self._starts
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            with self._changed:
                if self._starts == starts:
                    self._changed.wait(IDLE_REAP_INTERVAL_S)
            return
        with self._changed:
            notice = self._notices.pop(pid, None)
        if notice is not None:
            notice.deliver(status)


class ExecSpec:
    """A validated exec request: what to run, as whom, where, with what and for how long.

    `terminal` is the (cols, rows) of the pseudo-terminal the process runs on, None for pipes; a
    process on a terminal always runs in the background. `cmd` is the shell line it came from.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        account: Account,
        timeout_s: float,
        stdin: bool,
        *,
        cmd: str | None = None,
        background: bool = False,
        terminal: tuple[int, int] | None = None,
        buffer_bytes: int = DEFAULT_OUTPUT_BUFFER,
    ) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.account = account
        self.timeout_s = timeout_s
        self.stdin = stdin or terminal is not None
        self.cmd = cmd
        self.background = background or terminal is not None
        self.terminal = terminal
        self.buffer_bytes = buffer_bytes
        self.search_path = env.get("PATH") or DEFAULT_PATH


def parse_argv(request: dict[str, object]) -> list[str]:
    args = request.get("args")
    cmd = request.get("cmd")
    if args and cmd:
        raise invalid('exec takes either "args" or "cmd", not both')
    if cmd:
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        return [shell, "-c", string_arg(request, "cmd")]
    if not args:
        raise invalid('exec needs "args" (a list of strings) or "cmd" (a shell command line)')
    if not isinstance(args, list) or not all(isinstance(arg, str) and "\0" not in arg for arg in args):
        raise invalid('"args" must be a list of strings without NUL bytes')
    return args


def parse_env(request: dict[str, object]) -> dict[str, str]:
    env = request.get("env") or {}
    if not isinstance(env, dict):
        raise invalid('"env" must be an object of strings')
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise invalid(f"invalid environment variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise invalid(f"environment variable {key!r} must be a string without NUL bytes")
    return env


def parse_terminal_size(value: object, what: str) -> tuple[int, int]:
    """(cols, rows) from {"cols": int, "rows": int}, each 1..MAX_TERMINAL_SIZE."""
    if not isinstance(value, dict):
        raise invalid(f'{what} must be an object with "cols" and "rows"')
    size = []
    for name in ("cols", "rows"):
        number = value.get(name)
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_TERMINAL_SIZE:
            raise invalid(f'{what}: "{name}" must be an integer from 1 to {MAX_TERMINAL_SIZE}')
        size.append(number)
    return size[0], size[1]


def parse_buffer_bytes(request: dict[str, object]) -> int:
    size = int_arg(request, "buffer_bytes", DEFAULT_OUTPUT_BUFFER, minimum=1)
    if size > MAX_OUTPUT_BUFFER:
        raise invalid(f'"buffer_bytes" must be at most {MAX_OUTPUT_BUFFER}, got {size}')
    return size


def parse_exec_request(request: dict[str, object], default_user: str) -> ExecSpec:
    argv = parse_argv(request)
    env = parse_env(request)
    terminal = None if request.get("pty") is None else parse_terminal_size(request["pty"], '"pty"')
    if terminal is not None and "TERM" not in env:
        env = {**env, "TERM": DEFAULT_TERM}
    account = find_account(string_arg(request, "user") or default_user)
    cwd = string_arg(request, "cwd")
    if cwd:
        cwd = resolve_path(cwd, user_home(default_user), "cwd")
    else:
        cwd = account.home if os.path.isdir(account.home) else "/"
    timeout_s = int_arg(request, "timeout_ms", 0, minimum=0) / 1000
    # What a login would set; the request's own values win.
    env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name, **env}
    return ExecSpec(
        argv,
        env,
        cwd,
        account,
        timeout_s,
        bool_arg(request, "stdin"),
        cmd=string_arg(request, "cmd") or None,
        background=bool_arg(request, "background"),
        terminal=terminal,
        buffer_bytes=parse_buffer_bytes(request),
    )


def execute(argv: list[str], env: dict[str, str], search_path: str) -> None:
    """execve() with a PATH search like execvp's, but over `search_path` rather than our own PATH."""
    program = argv[0]
    if "/" in program:
        os.execve(program, argv, env)
    first_error: OSError | None = None
    for directory in search_path.split(":"):
        try:
            os.execve(os.path.join(directory or ".", program), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:  # e.g. EACCES: remember it, a later directory may still work
            first_error = first_error or err
    raise first_error or FileNotFoundError(errno.ENOENT, "not found", program)


def describe_start_failure(stage: str, err: BaseException, spec: ExecSpec) -> tuple[str, str]:
    """The (code, message) a failure in the forked child turns into."""
    if not isinstance(err, OSError):
        return "internal", f"cannot start {spec.argv[0]!r}: {err!r}"
    code = ERRNO_CODES.get(err.errno or 0, "internal")
    program = spec.argv[0]
    if stage == "exec" and isinstance(err, FileNotFoundError):
        where = "" if "/" in program else " in PATH"
        return "not_found", f"executable {program!r} not found{where}"
    if stage == "exec" and isinstance(err, PermissionError):
        return "permission_denied", f"permission denied executing {program!r}"
    if stage == "exec" and err.errno == errno.ENOEXEC:
        return "invalid_argument", f"{program!r} is not an executable program"
    if stage == "exec":
        return code, f"cannot execute {program!r}: {describe_os_error(err)}"
    if stage == "cwd":
        return code, f"cannot use working directory {spec.cwd!r}: {describe_os_error(err)}"
    if stage == "user":
        return "permission_denied", f"cannot switch to user {spec.account.name!r}: {describe_os_error(err)}"
    return code, f"cannot start {program!r}: {describe_os_error(err)}"


def run_child(spec: ExecSpec, stdin_fd: int, stdout_fd: int, stderr_fd: int, report_fd: int) -> None:
    """Runs in the forked child: sets it up and execs the program; never returns.

    A failure before exec is written to `report_fd` (close-on-exec, so an empty read in the parent
    means exec succeeded) and the child exits.
    """
    stage = "setup"
    try:
        os.setsid()
        if spec.terminal is not None:
            # The new session's controlling terminal, so that Ctrl-C and job control work on it.
            fcntl.ioctl(stdin_fd, termios.TIOCSCTTY, 0)
        for signum in CHILD_RESET_SIGNALS:
            try:
                signal.signal(signum, signal.SIG_DFL)
            except OSError:
                pass  # reserved for the C library's own use
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        if report_fd != 3:
            os.dup2(report_fd, 3, inheritable=False)
            report_fd = 3
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        stage = "user"
        if spec.terminal is not None:
            # The user's terminal, as a login makes it: programs reopen it as /dev/tty.
            os.fchown(0, spec.account.uid, -1)
        os.setgroups(spec.account.groups)
        os.setgid(spec.account.gid)
        os.setuid(spec.account.uid)
        stage = "cwd"
        os.chdir(spec.cwd)
        stage = "exec"
        execute(spec.argv, spec.env, spec.search_path)
    except BaseException as err:
        code, message = describe_start_failure(stage, err, spec)
        try:
            os.write(report_fd, f"{code}\n{message}".encode(errors="replace"))
        except BaseException:
            pass
    finally:
        os._exit(127)


def fork_child(spec: ExecSpec, stdin_fd: int, stdout_fd: int, stderr_fd: int, report_fd: int) -> int:
    pid = os.fork()
    if pid == 0:
        run_child(spec, stdin_fd, stdout_fd, stderr_fd, report_fd)
    return pid


def close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data


def kill_process_group(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass  # the group is already gone


def kill_process(pid: int) -> None:
    """Kills the process and its group (the process itself even if it left the group)."""
    kill_process_group(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class Child:
    """A started process: its pid, the supervisor's ends of its pipes and its exit notice."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int, stderr_fd: int, notice: ExitNotice) -> None:
        self.pid = pid
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.notice = notice

    def close_stdin(self) -> None:
        close_fds(self.stdin_fd)
        self.stdin_fd = -1

    def close(self) -> None:
        self.close_stdin()
        close_fds(self.stdout_fd, self.stderr_fd)
        self.notice.close()


def start_error(err: OSError) -> OpError:
    return OpError(ERRNO_CODES.get(err.errno or 0, "internal"), f"cannot start a process: {describe_os_error(err)}")


def set_window_size(fd: int, cols: int, rows: int) -> None:
    """Sizes the terminal; the kernel sends SIGWINCH to its foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def open_terminal(cols: int, rows: int) -> tuple[int, int]:
    """A new pseudo-terminal of that size, as (master, slave), both close-on-exec."""
    master, slave = os.openpty()
    try:
        set_window_size(master, cols, rows)
    except BaseException:
        close_fds(master, slave)
        raise
    return master, slave


def open_stdio(spec: ExecSpec) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The child's (stdin, stdout, stderr) and the supervisor's ends of them, (stdin, stdout, stderr).

    On a terminal the child gets the slave three times and the supervisor the master: read for
    output, and a duplicate for input, which ProcessInput owns apart from the output side.
    """
    if spec.terminal is not None:
        master, slave = open_terminal(*spec.terminal)
        try:
            terminal_input = os.dup(master)
        except BaseException:
            close_fds(master, slave)
            raise
        return (slave, slave, slave), (terminal_input, master, -1)
    fds: list[int] = []
    try:
        for _ in range(3):
            fds.extend(os.pipe2(os.O_CLOEXEC))
    except BaseException:
        close_fds(*fds)
        raise
    stdin_read, stdin_write, stdout_read, stdout_write, stderr_read, stderr_write = fds
    return (stdin_read, stdout_write, stderr_write), (stdin_write, stdout_read, stderr_read)


def start_process(spec: ExecSpec, reaper: Reaper) -> Child:
    """Forks and execs the process described by `spec`; raises OpError if it does not start."""
    try:
        child_ends, own_ends = open_stdio(spec)
    except OSError as err:
        raise start_error(err) from None
    try:
        report_read, report_write = os.pipe2(os.O_CLOEXEC)
    except OSError as err:
        close_fds(*set(child_ends), *own_ends)
        raise start_error(err) from None
    try:
        pid, notice = reaper.start(lambda: fork_child(spec, *child_ends, report_write))
    except BaseException as err:
        close_fds(*own_ends, report_read)
        if isinstance(err, OSError):
            raise start_error(err) from None
        raise
    finally:
        close_fds(*set(child_ends), report_write)  # the child's ends (a terminal's slave only once)
    failure = read_to_end(report_read)
    os.close(report_read)
    child = Child(pid, *own_ends, notice)
    if failure:
        notice.wait()
        child.close()
        code, _, message = failure.decode(errors="replace").partition("\n")
        raise OpError(code, message)
    if spec.stdin:
        # A process that does not read must not block the relay (on a terminal this also makes the
        # master non-blocking, which the output pump relies on: they share one open file).
        os.set_blocking(child.stdin_fd, False)
    else:
        child.close_stdin()  # the process sees end-of-file at once
    return child


def exit_report(status: int, timed_out: bool) -> dict[str, object]:
    if os.WIFSIGNALED(status):
        return {"exit_code": -1, "signal": os.WTERMSIG(status), "timed_out": timed_out}
    return {"exit_code": os.WEXITSTATUS(status), "signal": 0, "timed_out": timed_out}


def signal_number(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < signal.NSIG:
        raise invalid(f'"signal" must be a signal number between 1 and {signal.NSIG - 1}')
    return value


def parse_signal(payload: bytes) -> int:
    return signal_number(decode_object(payload, "SIGNAL frame").get("signal"))


class ExecRelay:
    """Relays one running process: the node-agent's frames to it, its output and exit back.

    STDIN frames for a process started without "stdin" are dropped: its stdin is already closed.
    Plain poll() rather than selectors, for POLLRDHUP: it tells that the node-agent went away even
    while its frames are not being read.
    """

    def __init__(self, conn: socket.socket, child: Child, timeout_s: float) -> None:
        self._conn = conn
        self._child = child
        self._timeout_s = timeout_s
        self._poll = select.poll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._outputs = {child.stdout_fd: protocol.STDOUT, child.stderr_fd: protocol.STDERR}
        self._pending_stdin = bytearray()
        self._stdin_eof_requested = False
        self._waiting_for_stdin = False
        self._exited = False

    def run(self) -> dict[str, object]:
        """Relays until the process exits and its pipes are drained; returns the EXIT payload."""
        self._watch(self._conn.fileno(), select.POLLIN, self._on_client_frame)
        for fd in self._outputs:
            self._watch(fd, select.POLLIN, self._on_output)
        self._watch(self._child.notice.fd, select.POLLIN, self._on_exit)
        deadline = time.monotonic() + self._timeout_s if self._timeout_s else None
        timed_out = False
        while not self._exited:
            remaining_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            for fd, _ in self._poll.poll(remaining_ms):
                handler = self._handlers.get(fd)  # None if an earlier handler in this batch unwatched it
                if handler is not None:
                    handler(fd)
            if deadline is not None and not self._exited and time.monotonic() >= deadline:
                kill_process_group(self._child.pid)
                timed_out = True
                deadline = None
        self._child.close_stdin()
        self._drain_outputs()
        return exit_report(self._child.notice.status, timed_out)

    def _watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self._poll.register(fd, events)  # replaces the events of an fd already watched
        self._handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self._poll.unregister(fd)
        del self._handlers[fd]

    def _on_client_frame(self, _fd: int) -> None:
        frame_type, payload = receive_frame(self._conn)
        if frame_type == protocol.STDIN:
            self._write_stdin(payload)
        elif frame_type == protocol.STDIN_EOF:
            self._stdin_eof_requested = True
            self._update_stdin_watch()
        elif frame_type == protocol.SIGNAL:
            kill_process_group(self._child.pid, parse_signal(payload))
        else:
            raise invalid(f"frame type {frame_type} is not allowed while a process runs")

    def _write_stdin(self, data: bytes) -> None:
        if self._child.stdin_fd < 0:
            return
        self._pending_stdin += data
        self._flush_stdin()

    def _flush_stdin(self, _fd: int = -1) -> None:
        try:
            written = os.write(self._child.stdin_fd, self._pending_stdin)
            del self._pending_stdin[:written]
        except BlockingIOError:
            pass
        except OSError:  # the process closed its stdin: what it did not read is dropped
            self._pending_stdin.clear()
            self._stdin_eof_requested = True
        self._update_stdin_watch()

    def _update_stdin_watch(self) -> None:
        """While input waits for the process, stop reading frames (backpressure, not a growing
        buffer) but still notice the node-agent going away.
        """
        conn_fd = self._conn.fileno()
        if self._pending_stdin and not self._waiting_for_stdin:
            self._watch(conn_fd, select.POLLRDHUP, self._on_client_gone)
            self._watch(self._child.stdin_fd, select.POLLOUT, self._flush_stdin)
            self._waiting_for_stdin = True
        elif not self._pending_stdin:
            if self._waiting_for_stdin:
                self._unwatch(self._child.stdin_fd)
                self._watch(conn_fd, select.POLLIN, self._on_client_frame)
                self._waiting_for_stdin = False
            if self._stdin_eof_requested:
                self._child.close_stdin()

    def _on_client_gone(self, _fd: int) -> None:
        raise ConnectionClosed

    def _on_output(self, fd: int) -> None:
        data = os.read(fd, protocol.CHUNK)
        if data:
            send_frame(self._conn, self._outputs[fd], data)
        else:
            self._unwatch(fd)
            del self._outputs[fd]

    def _on_exit(self, _fd: int) -> None:
        self._child.notice.wait()
        self._exited = True

    def _drain_outputs(self) -> None:
        """Forwards what is already in the pipes without waiting for more: a background process
        that inherited them must not keep the call open.
        """
        for fd, frame_type in self._outputs.items():
            os.set_blocking(fd, False)
            for _ in range(DRAIN_CHUNKS):
                try:
                    data = os.read(fd, protocol.CHUNK)
                except BlockingIOError:
                    break
                if not data:
                    break
                send_frame(self._conn, frame_type, data)


# Background processes ----------------------------------------------------------------------------


class OutputChunk:
    """Consecutive output of one stream: `offset` is the position of its first byte."""

    __slots__ = ("offset", "frame_type", "data")

    def __init__(self, offset: int, frame_type: int, data: bytes) -> None:
        self.offset = offset
        self.frame_type = frame_type
        self.data = bytearray(data)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class OutputBuffer:
    """The recent output of a background process: stdout and stderr chunks in the order they were
    written, at most `limit` bytes, the oldest dropped first.

    Positions are byte offsets into everything the process ever wrote (both streams together), so a
    reader's cursor stays meaningful while data is dropped in front of it, and `start` (the offset of
    the oldest byte kept) is also the number of bytes dropped. Consecutive writes to the same stream
    are merged into one chunk (up to a frame's worth), and the number of chunks is bounded too, so
    that a process alternating single bytes between its streams cannot make the bookkeeping outgrow
    the data.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.max_chunks = max(16, limit // 256)
        self.start = 0
        self.end = 0
        self._chunks: deque[OutputChunk] = deque()

    @property
    def size(self) -> int:
        return self.end - self.start

    def append(self, frame_type: int, data: bytes) -> None:
        last = self._chunks[-1] if self._chunks else None
        if last is not None and last.frame_type == frame_type and len(last.data) + len(data) <= protocol.CHUNK:
            last.data += data
        else:
            self._chunks.append(OutputChunk(self.end, frame_type, data))
        self.end += len(data)
        self._trim()

    def _trim(self) -> None:
        while self.size > self.limit or len(self._chunks) > self.max_chunks:
            oldest = self._chunks[0]
            excess = self.size - self.limit
            if len(self._chunks) <= self.max_chunks and excess < len(oldest.data):
                del oldest.data[:excess]  # only the front of the oldest chunk has to go
                oldest.offset += excess
                self.start += excess
            else:
                self._chunks.popleft()
                self.start += len(oldest.data)

    def read(self, cursor: int, max_bytes: int = protocol.CHUNK) -> tuple[int, list[tuple[int, bytes]], int]:
        """What follows `cursor`: (bytes dropped before it could be read, [(frame type, data)] of at
        most `max_bytes` together, the cursor after them).
        """
        skipped = max(0, self.start - cursor)
        cursor = max(cursor, self.start)
        first = len(self._chunks)
        # Readers are usually near the end, following live output: look from there.
        while first > 0 and self._chunks[first - 1].end > cursor:
            first -= 1
        found: list[tuple[int, bytes]] = []
        room = max_bytes
        for index in range(first, len(self._chunks)):
            if room <= 0:
                break
            chunk = self._chunks[index]
            begin = cursor - chunk.offset
            piece = bytes(chunk.data[begin : begin + room])
            found.append((chunk.frame_type, piece))
            cursor += len(piece)
            room -= len(piece)
        return skipped, found, cursor

    def clear(self) -> None:
        """Lets go of everything kept; it counts as dropped."""
        self._chunks.clear()
        self.start = self.end


# Terminals ---------------------------------------------------------------------------------------


class TerminalSupport:
    """What the sandbox kernel's pseudo-terminals do by themselves, found out once, with the first
    terminal: gVisor releases before 2023 neither turn Ctrl-C (and Ctrl-\\, Ctrl-Z) into signals nor
    send SIGWINCH when the window size changes. Where the kernel does not, the supervisor does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probed = False
        self.sends_key_signals = True
        self.sends_resize_signal = True

    def ensure_probed(self, reaper: Reaper) -> None:
        with self._lock:
            if not self._probed:
                self.sends_key_signals, self.sends_resize_signal = probe_terminal(reaper)
                self._probed = True


def probe_terminal(reaper: Reaper) -> tuple[bool, bool]:
    """(whether Ctrl-C on a terminal signals its foreground group, whether resizing it does), tried
    on a throwaway terminal whose session is a forked child that reports the signals it gets.
    """
    fds: list[int] = []
    try:
        master, slave = open_terminal(80, 24)
        fds += (master, slave)
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        fds.append(ready_read)
        try:
            pid, notice = reaper.start(lambda: fork_terminal_probe(slave, ready_write))
        finally:
            os.close(ready_write)  # the child's: once it is gone, a read sees the end
        try:
            status = await_terminal_probe(pid, notice, master, ready_read)
        finally:
            notice.close()
    except OSError as err:
        raise start_error(err) from None
    finally:
        close_fds(*fds)
    seen = os.WEXITSTATUS(status) if os.WIFEXITED(status) and os.WEXITSTATUS(status) < 4 else 3
    return bool(seen & 1), bool(seen & 2)


def await_terminal_probe(pid: int, notice: ExitNotice, master: int, ready_fd: int) -> int:
    """Presses Ctrl-C on the probe's terminal and resizes it, then returns the child's wait status."""
    if os.read(ready_fd, 1):  # nothing: the child failed to set up, which reads as "the kernel does it all"
        os.write(master, b"\x03")
        set_window_size(master, 81, 24)
        waiter = select.poll()
        waiter.register(notice.fd, select.POLLIN)
        if not waiter.poll(TERMINAL_PROBE_WAIT_S * 2000):
            kill_process(pid)
    return notice.wait()


def fork_terminal_probe(slave: int, ready_fd: int) -> int:
    """Forks the probe's child: it makes `slave` its controlling terminal, says it is ready, and
    exits with bit 1 set if SIGINT came, bit 2 if SIGWINCH did, within TERMINAL_PROBE_WAIT_S.
    """
    pid = os.fork()
    if pid != 0:
        return pid
    seen = 4  # set up failed
    try:
        # Caught signals, not ignored ones (which a kernel may drop), and blocked, to be waited for.
        for signum in (signal.SIGINT, signal.SIGWINCH):
            signal.signal(signum, ignore_signal)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGWINCH})
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        seen = 0
        os.write(ready_fd, b"\0")
        deadline = time.monotonic() + TERMINAL_PROBE_WAIT_S
        while seen != 3 and (remaining := deadline - time.monotonic()) > 0:
            info = signal.sigtimedwait({signal.SIGINT, signal.SIGWINCH}, remaining)
            if info is None:
                break
            seen |= 1 if info.si_signo == signal.SIGINT else 2
    finally:
        os._exit(seen)


def ignore_signal(signum: int, frame: object) -> None:
    pass


def split_terminal_input(data: bytes, keys: dict[int, int]) -> list[bytes | int]:
    """`data` cut at every byte of `keys` (a signal key such as Ctrl-C), which is replaced by its
    signal number: [b"abc", 2, b"def"] for b"abc\\x03def" with {3: SIGINT}.
    """
    if not any(key in data for key in keys):
        return [data]
    pieces: list[bytes | int] = []
    start = 0
    for index, byte in enumerate(data):
        if byte in keys:
            if index > start:
                pieces.append(data[start:index])
            pieces.append(keys[byte])
            start = index + 1
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def signal_keys(fd: int) -> dict[int, int]:
    """The terminal's signal keys, {byte: signal}, as its settings are now; none while ISIG is off
    (a program in raw mode, such as an editor, reads Ctrl-C as a byte).
    """
    attributes = termios.tcgetattr(fd)
    if not attributes[3] & termios.ISIG:
        return {}
    control = attributes[6]
    keys = {}
    for index, signum in (
        (termios.VINTR, signal.SIGINT),
        (termios.VQUIT, signal.SIGQUIT),
        (termios.VSUSP, signal.SIGTSTP),
    ):
        key = control[index]
        if isinstance(key, bytes) and key != b"\0":  # NUL: the key is disabled
            keys[key[0]] = int(signum)
    return keys


def signal_terminal(fd: int, session: int, signum: int) -> None:
    """Signals the foreground process group of the terminal `fd` (a master), whose session leader
    is `session`, as its line discipline would.

    A kernel that cannot tell the foreground group (gVisor before 2023 answers ENOTTY) gets a guess
    from /proc: a resize goes to every group of the session; a key to its jobs other than the leader
    (a shell waits for its foreground job; its background jobs, if any, get the signal too), or to
    the leader's group when it has none.
    """
    try:
        groups = {os.tcgetpgrp(fd)}
    except OSError:
        groups = session_process_groups(session)
        if signum != signal.SIGWINCH and groups - {session}:
            groups.discard(session)
    for group in groups:
        kill_process_group(group, signum)


def session_process_groups(session: int) -> set[int]:
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rpartition(b")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # After the name: state, ppid, pgrp, session.
        if len(fields) > 3 and int(fields[3]) == session:
            groups.add(int(fields[2]))
    return groups


# The process table -------------------------------------------------------------------------------


class ProcessInput:
    """The stdin of a background process (a pipe, or a duplicate of its terminal's master), written by
    any number of connections (attached ones and the stdin op), one frame at a time, in order.

    With `emulate_keys` (a terminal whose kernel does not turn signal keys into signals, see
    TerminalSupport) a signal key is not written: its signal goes to the foreground process group,
    as a line discipline would send it (without echoing it as ^C).

    A writer blocked on a process that does not read holds the lock; so the output pump, which must
    never block, only marks the process exited, and whoever holds the lock closes the fd.
    """

    def __init__(self, pid: int, fd: int, emulate_keys: bool = False) -> None:
        self._pid = pid
        self._fd = fd
        self._emulate_keys = emulate_keys
        self._lock = threading.Lock()
        self._exited = False

    def write(self, data: bytes, conn: socket.socket) -> None:
        """Writes all of `data`, waiting while the process does not read; raises OpError
        (failed_precondition) once the input is closed or the process has exited.
        """
        with self._lock:
            try:
                self._check_open()
                keys = signal_keys(self._fd) if self._emulate_keys else {}
                for piece in split_terminal_input(data, keys) if keys else [data]:
                    if isinstance(piece, int):
                        signal_terminal(self._fd, self._pid, piece)
                    else:
                        self._write_all(piece, conn)
            finally:
                if self._exited:
                    self._close()

    def _write_all(self, data: bytes, conn: socket.socket) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                self._wait_writable(conn)
            except OSError:  # EPIPE, or EIO from a terminal nobody holds any more
                self._close()
                raise OpError("failed_precondition", f"process {self._pid} no longer reads its input") from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def process_exited(self) -> None:
        self._exited = True
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()

    def _check_open(self) -> None:
        if self._exited:
            raise OpError("failed_precondition", f"process {self._pid} has exited")
        if self._fd < 0:
            raise OpError("failed_precondition", f"the input of process {self._pid} is closed")

    def _wait_writable(self, conn: socket.socket) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        poller.register(conn.fileno(), select.POLLRDHUP)
        while True:
            ready = poller.poll(INPUT_RECHECK_MS)
            self._check_open()
            if any(fd == conn.fileno() for fd, _ in ready) or (not ready and peer_closed(conn)):
                raise ConnectionClosed
            if ready:
                return

    def _close(self) -> None:
        close_fds(self._fd)
        self._fd = -1


def peer_closed(conn: socket.socket) -> bool:
    """Whether the peer has closed the connection, without consuming any of its frames."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class BackgroundProcess:
    """A process that outlives its connection (exec with "background" or "pty"), as the process table
    keeps it: its output buffer, its input, its state, and the connections attached to it.

    The output pump owns the output fds and is the only writer of the buffer and the state; `lock`
    guards them for the attached connections, which it wakes through their eventfds.
    """

    def __init__(self, child: Child, spec: ExecSpec, terminals: TerminalSupport) -> None:
        self.pid = child.pid
        self.child = child
        self.spec = spec
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.status: int | None = None  # the wait status, once it has exited and its output is in
        self.timed_out = False
        self.deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
        self.drain_deadline: float | None = None  # set when it exits with its output still open
        on_terminal = spec.terminal is not None
        self.input = ProcessInput(child.pid, child.stdin_fd, on_terminal and not terminals.sends_key_signals)
        self._signal_resize = on_terminal and not terminals.sends_resize_signal
        self.output = OutputBuffer(spec.buffer_bytes)
        self.lock = threading.Lock()
        self._readers: set[int] = set()
        outputs = {child.stdout_fd: protocol.STDOUT, child.stderr_fd: protocol.STDERR}
        self.outputs = {fd: frame_type for fd, frame_type in outputs.items() if fd >= 0}
        for fd in self.outputs:
            os.set_blocking(fd, False)  # the pump drains them at exit without waiting for more
        self._terminal_fd = child.stdout_fd if spec.terminal is not None else -1

    @property
    def exited(self) -> bool:
        return self.status is not None

    def info(self) -> dict[str, object]:
        with self.lock:
            report = exit_report(self.status, self.timed_out) if self.status is not None else None
            return {
                "pid": self.pid,
                "args": self.spec.argv,
                "cmd": self.spec.cmd,
                "user": self.spec.account.name,
                "cwd": self.spec.cwd,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "state": "running" if report is None else "exited",
                "exit_code": None if report is None else report["exit_code"],
                "signal": None if report is None else report["signal"],
                "timed_out": self.timed_out,
                "pty": self.spec.terminal is not None,
                "dropped_bytes": self.output.start,
            }

    def exit_report(self) -> dict[str, object]:
        with self.lock:
            assert self.status is not None
            return exit_report(self.status, self.timed_out)

    # Attached connections

    def attach(self, wake_fd: int, replay: bool) -> tuple[int, int]:
        """Registers a connection's eventfd; returns (its cursor, the bytes dropped before it)."""
        with self.lock:
            self._readers.add(wake_fd)
            if replay:
                return self.output.start, self.output.start
            return self.output.end, 0

    def detach(self, wake_fd: int) -> None:
        with self.lock:
            self._readers.discard(wake_fd)

    def read_output(self, cursor: int) -> tuple[int, list[tuple[int, bytes]], int, bool]:
        """OutputBuffer.read, plus whether the process has exited with all of its output in."""
        with self.lock:
            return (*self.output.read(cursor), self.exited)

    def time_out(self) -> None:
        with self.lock:
            self.deadline = None
            self.timed_out = True
            kill_process_group(self.pid)

    def signal(self, signum: int) -> bool:
        """Signals the process group; False once the process has exited (its pid may be reused)."""
        with self.lock:
            if self.exited:
                return False
            kill_process_group(self.pid, signum)
            return True

    def resize(self, cols: int, rows: int) -> None:
        with self.lock:
            if self._terminal_fd >= 0:
                set_window_size(self._terminal_fd, cols, rows)
                if self._signal_resize:
                    signal_terminal(self._terminal_fd, self.pid, signal.SIGWINCH)

    # The output pump's side

    def append_output(self, frame_type: int, data: bytes) -> None:
        with self.lock:
            self.output.append(frame_type, data)
            self._wake_readers()

    def close_output(self, fd: int) -> None:
        with self.lock:
            del self.outputs[fd]
            if fd == self._terminal_fd:
                self._terminal_fd = -1
            os.close(fd)

    def finish(self) -> None:
        """Records the exit (all output is in): readers send what is left, then EXIT."""
        with self.lock:
            self.status = self.child.notice.wait()
            self.ended_at = time.time()
            self.child.notice.close()
            self._wake_readers()
        self.input.process_exited()

    def discard_output(self) -> None:
        with self.lock:
            self.output.clear()

    def _wake_readers(self) -> None:
        for fd in self._readers:
            os.eventfd_write(fd, 1)


class ProcessTable:
    """The background processes: those running, and the last MAX_FINISHED_PROCESSES that exited."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, BackgroundProcess] = {}
        self._finished: dict[int, BackgroundProcess] = {}  # oldest first

    def add(self, process: BackgroundProcess) -> None:
        with self._lock:
            self._finished.pop(process.pid, None)  # an earlier process that had the same pid
            self._running[process.pid] = process

    def finished(self, process: BackgroundProcess) -> None:
        with self._lock:
            if self._running.get(process.pid) is process:
                del self._running[process.pid]
            self._finished[process.pid] = process
            while len(self._finished) > MAX_FINISHED_PROCESSES:
                del self._finished[next(iter(self._finished))]
            kept = sum(finished.output.size for finished in self._finished.values())
            for finished in self._finished.values():
                if kept <= MAX_FINISHED_OUTPUT:
                    break
                kept -= finished.output.size
                finished.discard_output()

    def get(self, pid: int) -> BackgroundProcess:
        with self._lock:
            process = self._running.get(pid) or self._finished.get(pid)
        if process is None:
            raise OpError("not_found", f"no process {pid} in this sandbox (it may have finished long ago)")
        return process

    def all(self) -> list[BackgroundProcess]:
        with self._lock:
            processes = [*self._finished.values(), *self._running.values()]
        return sorted(processes, key=lambda process: process.started_at)


class OutputPump:
    """One thread that reads the output of every background process into its buffer, notices its
    exit and enforces its timeout: a background process never waits for a reader, and a hundred of
    them cost one thread, not a hundred (threads count against the sandbox's process limit).
    """

    def __init__(self, table: ProcessTable) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._incoming: list[BackgroundProcess] = []
        self._wake = -1
        self._poll = select.poll()
        self._owners: dict[int, BackgroundProcess] = {}  # output and exit-notice fds watched
        self._processes: set[BackgroundProcess] = set()

    def ensure_running(self) -> None:
        """Starts the pump's thread with the first background process; raises OpError if the
        sandbox has no thread left for it, before any process is started.
        """
        with self._lock:
            if self._wake >= 0:
                return
            try:
                wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            except OSError as err:
                raise start_error(err) from None
            try:
                threading.Thread(target=self._run, args=(wake,), name="output-pump", daemon=True).start()
            except RuntimeError:
                os.close(wake)
                raise OpError(
                    "resource_exhausted", "cannot start a thread: the sandbox's process limit is reached"
                ) from None
            self._wake = wake

    def add(self, process: BackgroundProcess) -> None:
        with self._lock:
            self._incoming.append(process)
        os.eventfd_write(self._wake, 1)

    def _run(self, wake: int) -> None:
        self._poll.register(wake, select.POLLIN)
        while True:
            try:
                self._step()
            except Exception as err:  # the pump must outlive any surprise
                log(f"output pump: {err!r}")
                time.sleep(0.1)

    def _step(self) -> None:
        for fd, _ in self._poll.poll(self._poll_timeout_ms()):
            if fd == self._wake:
                self._on_wake()
                continue
            process = self._owners.get(fd)  # None if an earlier event in this batch closed it
            if process is None:
                continue
            if fd == process.child.notice.fd:
                self._on_exit(process)
            else:
                self._on_output(process, fd)
        now = time.monotonic()
        for process in list(self._processes):
            if process.deadline is not None and now >= process.deadline:
                process.time_out()
            if process.drain_deadline is not None and now >= process.drain_deadline:
                self._finish(process)

    def _poll_timeout_ms(self) -> float | None:
        deadlines = [
            deadline
            for process in self._processes
            for deadline in (process.deadline, process.drain_deadline)
            if deadline is not None
        ]
        return max(0.0, min(deadlines) - time.monotonic()) * 1000 if deadlines else None

    def _watch(self, fd: int, process: BackgroundProcess) -> None:
        self._poll.register(fd, select.POLLIN)
        self._owners[fd] = process

    def _unwatch(self, fd: int) -> None:
        self._poll.unregister(fd)
        del self._owners[fd]

    def _on_wake(self) -> None:
        os.eventfd_read(self._wake)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for process in incoming:
            self._processes.add(process)
            for fd in process.outputs:
                self._watch(fd, process)
            self._watch(process.child.notice.fd, process)

    def _on_output(self, process: BackgroundProcess, fd: int) -> None:
        ended = self._read_output(process, fd) < 0
        if ended and not process.outputs and process.drain_deadline is not None:
            self._finish(process)  # it had exited already: that was the last of its output

    def _read_output(self, process: BackgroundProcess, fd: int) -> int:
        """Reads one chunk into the buffer and returns its size: 0 if nothing is there yet, -1 at
        the end of the output, when the fd is closed.
        """
        try:
            data = os.read(fd, protocol.CHUNK)
        except BlockingIOError:
            return 0
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: every holder of the terminal's slave has closed it
                log(f"reading the output of process {process.pid}: {err!r}")
            data = b""
        if data:
            process.append_output(process.outputs[fd], data)
            return len(data)
        self._unwatch(fd)
        process.close_output(fd)
        return -1

    def _on_exit(self, process: BackgroundProcess) -> None:
        self._unwatch(process.child.notice.fd)
        if process.outputs:
            process.drain_deadline = time.monotonic() + EXIT_DRAIN_S
        else:
            self._finish(process)

    def _finish(self, process: BackgroundProcess) -> None:
        """Takes what is already in the outputs (a background grandchild that holds them must not
        keep the process from being reported exited), closes them and records the exit.
        """
        for fd in list(process.outputs):
            for _ in range(DRAIN_CHUNKS):
                if self._read_output(process, fd) <= 0:
                    break
            if fd in process.outputs:
                self._unwatch(fd)
                process.close_output(fd)
        process.drain_deadline = None
        self._processes.discard(process)
        process.finish()
        self._table.finished(process)


class Attachment:
    """One connection attached to a background process (the exec that started it, or attach): sends
    the output from its cursor on, then EXIT once the process has exited and everything it wrote was
    sent; passes the connection's STDIN, STDIN_EOF, SIGNAL and RESIZE frames to the process.

    The connection closing only ends the attachment: the process keeps running.
    """

    def __init__(self, conn: socket.socket, process: BackgroundProcess) -> None:
        self._conn = conn
        self._process = process

    def run(self, replay: bool) -> None:
        wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cursor, dropped = self._process.attach(wake, replay)
            try:
                send_json(self._conn, protocol.STARTED, {"pid": self._process.pid, "dropped_bytes": dropped})
                self._relay(wake, cursor)
            finally:
                self._process.detach(wake)
        finally:
            os.close(wake)

    def _relay(self, wake: int, cursor: int) -> None:
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLIN)
        poller.register(wake, select.POLLIN)
        while True:
            skipped, chunks, cursor, exited = self._process.read_output(cursor)
            if skipped:
                send_json(self._conn, protocol.DROPPED, {"bytes": skipped})
            for frame_type, data in chunks:
                send_frame(self._conn, frame_type, data)
            if exited and not chunks:
                send_json(self._conn, protocol.EXIT, self._process.exit_report())
                return
            # With output sent, more may be waiting: look at the connection's frames, then go on.
            for fd, _ in poller.poll(0 if chunks else None):
                if fd == wake:
                    os.eventfd_read(wake)
                else:
                    self._on_client_frame()

    def _on_client_frame(self) -> None:
        frame_type, payload = receive_frame(self._conn)
        process = self._process
        if frame_type == protocol.STDIN:
            try:
                process.input.write(payload, self._conn)
            except OpError:
                pass  # closed or exited: dropped, as for a foreground process started without stdin
        elif frame_type == protocol.STDIN_EOF:
            process.input.close()
        elif frame_type == protocol.SIGNAL:
            process.signal(parse_signal(payload))
        elif frame_type == protocol.RESIZE:
            process.resize(*parse_terminal_size(decode_object(payload, "RESIZE frame"), "RESIZE"))
        else:
            raise invalid(f"frame type {frame_type} is not allowed while attached to a process")


# Watching files ----------------------------------------------------------------------------------

IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_ISDIR = 0x40000000
WATCH_MASK = (
    IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
# struct inotify_event without its name: int wd; uint32_t mask, cookie, len.
INOTIFY_EVENT = struct.Struct("iIII")
# Enough for many events at once; the kernel needs room for at least one with a NAME_MAX name.
INOTIFY_READ_SIZE = 64 * 1024
# Reads of queued events between two flushes of EVENT frames, so that a flood still reaches the client.
INOTIFY_READS_PER_BATCH = 16
# A rename is IN_MOVED_FROM then IN_MOVED_TO with the same cookie, queued one right after the other;
# a MOVED_FROM whose partner has not come within this time was a move out of the watched tree.
MOVE_PAIR_WINDOW_S = 0.05


def parse_inotify_events(data: bytes) -> list[tuple[int, int, int, str]]:
    """Splits what a read of an inotify fd returned into (wd, mask, cookie, name) tuples; the
    name, NUL-padded by the kernel, is "" for events about the watched directory itself.
    """
    events = []
    offset = 0
    while offset + INOTIFY_EVENT.size <= len(data):
        wd, mask, cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
        offset += INOTIFY_EVENT.size
        name = os.fsdecode(data[offset : offset + length].split(b"\0", 1)[0])
        offset += length
        events.append((wd, mask, cookie, name))
    return events


class LibcInotify:
    """inotify_init1, inotify_add_watch and inotify_rm_watch from the C library: the standard
    library has no binding for them. Loaded with the first watch, not at startup.
    """

    _functions: ctypes.CDLL | None = None

    @classmethod
    def functions(cls) -> ctypes.CDLL:
        if cls._functions is None:
            libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own C library
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_init1.restype = ctypes.c_int
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_add_watch.restype = ctypes.c_int
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.inotify_rm_watch.restype = ctypes.c_int
            cls._functions = libc
        return cls._functions


def last_os_error(path: str | None = None) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, os.strerror(number), path)


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self._libc = LibcInotify.functions()
        fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            raise last_os_error()
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise last_os_error(path)
        return wd

    def remove_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails only for a watch the kernel already dropped

    def read(self) -> bytes | None:
        """Queued events, or None when there are none."""
        try:
            return os.read(self.fd, INOTIFY_READ_SIZE)
        except BlockingIOError:
            return None

    def close(self) -> None:
        close_fds(self.fd)
        self.fd = -1


def watch_error(err: OSError, path: str) -> OpError:
    if err.errno == errno.ENOSPC:  # inotify's way of saying max_user_watches is reached
        return OpError(
            "resource_exhausted", f"cannot watch {path!r}: the sandbox's limit on watched directories is reached"
        )
    return fs_error(err, f"watch {path!r}")


class DirectoryWatch:
    """A directory (and, if recursive, every directory below it, including ones created later) turned
    into a stream of change events: {"type", "path", "is_dir"} plus "old_path" for a rename.

    A directory that appears inside the tree gets its watch first and is then scanned once, so that
    what was created in it before the watch existed is reported too; what the scan reported is kept
    in `_scanned` until the queue has been read empty, so that the IN_CREATE events queued meanwhile
    for the same entries are not reported twice.
    """

    def __init__(self, root: str, recursive: bool) -> None:
        self.root = root
        self.recursive = recursive
        self._inotify = Inotify()
        self._directories: dict[int, str] = {}  # watch descriptor -> directory
        self._moves: dict[int, tuple[str, bool, float]] = {}  # cookie -> (path, is_dir, deadline)
        self._scanned: set[str] = set()
        self._events: list[dict[str, object]] = []
        try:
            self._root_wd = self._add_watch(root, must_exist=True)
            if recursive:
                self._watch_below(root, report=False)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._inotify.close()

    def fileno(self) -> int:
        return self._inotify.fd

    def take_events(self) -> list[dict[str, object]]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        return min((deadline for _, _, deadline in self._moves.values()), default=None)

    def read_events(self) -> None:
        """Turns what is queued into events (at most INOTIFY_READS_PER_BATCH reads' worth)."""
        for _ in range(INOTIFY_READS_PER_BATCH):
            data = self._inotify.read()
            if data is None:
                self._scanned.clear()  # every event queued before the scans has been seen
                return
            for wd, mask, cookie, name in parse_inotify_events(data):
                self.handle(wd, mask, cookie, name)

    def expire_moves(self, now: float) -> None:
        for cookie, (path, is_dir, deadline) in list(self._moves.items()):
            if deadline <= now:
                del self._moves[cookie]
                self._emit("delete", path, is_dir)
                self._forget_tree(path)

    def handle(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            raise OpError(
                "resource_exhausted",
                f"too many changes under {self.root!r} at once: events were lost; watch again to go on",
            )
        directory = self._directories.get(wd)
        if directory is None:
            return  # from a watch already removed
        if mask & IN_IGNORED:
            del self._directories[wd]
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            if wd == self._root_wd:
                raise OpError("not_found", f"the watched directory {self.root!r} was deleted or moved away")
            if mask & IN_MOVE_SELF:
                self._moved_away(directory)
            return  # otherwise its parent's watch reports it
        path = os.path.join(directory, name)
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            self._created(path, is_dir)
        elif mask & IN_MODIFY:
            self._emit("modify", path, is_dir)
        elif mask & IN_DELETE:
            self._scanned.discard(path)
            self._emit("delete", path, is_dir)
        elif mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, is_dir, time.monotonic() + MOVE_PAIR_WINDOW_S)
        elif mask & IN_MOVED_TO:
            source = self._moves.pop(cookie, None)
            if source is None:
                self._created(path, is_dir)  # moved in from outside the tree
            else:
                self._renamed(source[0], path, is_dir)

    def _moved_away(self, directory: str) -> None:
        """A watched directory moved. A rename queues MOVED_FROM, MOVED_TO, then MOVE_SELF: if its
        MOVED_FROM still waits for a partner, it left the tree, and is reported gone now, before
        anything that happens in it where it went could be reported as happening here.
        """
        for cookie, (path, is_dir, _) in list(self._moves.items()):
            if path == directory:
                del self._moves[cookie]
                self._emit("delete", path, is_dir)
                self._forget_tree(path)

    def _emit(self, kind: str, path: str, is_dir: bool, old_path: str | None = None) -> None:
        event: dict[str, object] = {"type": kind, "path": path, "is_dir": is_dir}
        if old_path is not None:
            event["old_path"] = old_path
        # Modifications of one file queued back to back are one event: they all happened before it
        # is sent, so a client that reacts to it sees the file as they left it.
        if kind == "modify" and self._events and self._events[-1] == event:
            return
        self._events.append(event)

    def _created(self, path: str, is_dir: bool) -> None:
        if path in self._scanned:
            self._scanned.discard(path)  # already reported by the scan of its new parent
            return
        self._emit("create", path, is_dir)
        if is_dir and self.recursive:
            self._add_watch(path)
            self._watch_below(path, report=True)

    def _renamed(self, old_path: str, path: str, is_dir: bool) -> None:
        self._emit("rename", path, is_dir, old_path)
        prefix = old_path + "/"
        for wd, directory in self._directories.items():
            if directory == old_path or directory.startswith(prefix):
                self._directories[wd] = path + directory[len(old_path) :]

    def _forget_tree(self, path: str) -> None:
        """Stops watching `path` and what is below it: it left the tree, and a watch follows its
        directory wherever it goes.
        """
        prefix = path + "/"
        for wd, directory in list(self._directories.items()):
            if directory == path or directory.startswith(prefix):
                self._inotify.remove_watch(wd)
                del self._directories[wd]

    def _add_watch(self, directory: str, must_exist: bool = False) -> int:
        mask = WATCH_MASK if must_exist else WATCH_MASK | IN_DONT_FOLLOW
        try:
            wd = self._inotify.add_watch(directory, mask)
        except OSError as err:
            if must_exist or err.errno == errno.ENOSPC:
                raise watch_error(err, directory) from None
            return -1  # gone again, or replaced by something else: its parent's events tell
        self._directories[wd] = directory
        return wd

    def _watch_below(self, directory: str, report: bool) -> None:
        """Watches the directories below `directory`; with `report`, reports everything found."""
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            return  # gone again: its parent's events tell
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if report:
                self._scanned.add(entry.path)
                self._emit("create", entry.path, is_dir)
            if is_dir and self._add_watch(entry.path) >= 0:
                self._watch_below(entry.path, report)


def relay_watch(conn: socket.socket, watch: DirectoryWatch) -> None:
    """Sends the watch's events until the client closes the connection."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    poller.register(watch.fileno(), select.POLLIN)
    while True:
        deadline = watch.next_deadline()
        timeout_ms = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        for fd, _ in poller.poll(timeout_ms):
            if fd == conn.fileno():
                frame_type, _ = receive_frame(conn)  # raises ConnectionClosed once the client is done
                raise invalid(f"a watch takes no frames, got frame type {frame_type}")
            watch.read_events()
        watch.expire_moves(time.monotonic())
        for event in watch.take_events():
            send_json(conn, protocol.EVENT, event)


# TCP relay ---------------------------------------------------------------------------------------

# How long connecting to a port inside the sandbox may take; on loopback it is immediate or refused.
TCP_CONNECT_TIMEOUT_S = 5.0


def loopback_family(host: str) -> socket.AddressFamily:
    """The address family of a loopback address (127.0.0.0/8, ::1 or "localhost"); anything else
    is refused: the relay reaches into the sandbox, never through it.
    """
    if host == "localhost":
        return socket.AF_INET
    try:
        if socket.inet_pton(socket.AF_INET, host)[0] == 127:
            return socket.AF_INET
    except OSError:
        pass
    try:
        if socket.inet_pton(socket.AF_INET6, host) == bytes(15) + b"\1":
            return socket.AF_INET6
    except OSError:
        pass
    raise invalid(f'"host" must be a loopback address such as 127.0.0.1 or ::1, got {host!r}')


def connect_inside(host: str, port: int) -> socket.socket:
    family = loopback_family(host)
    target = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        target.settimeout(TCP_CONNECT_TIMEOUT_S)
        target.connect(("127.0.0.1" if host == "localhost" else host, port))
        target.settimeout(None)
        # A relay of interactive traffic (terminals over WebSocket, dev servers): no Nagle delay.
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as err:
        target.close()
        if isinstance(err, ConnectionRefusedError):
            raise OpError("unavailable", f"nothing listens on port {port} in the sandbox") from None
        if isinstance(err, TimeoutError):
            raise OpError(
                "unavailable", f"port {port} in the sandbox did not accept within {TCP_CONNECT_TIMEOUT_S:g} s"
            ) from None
        raise OpError(
            "unavailable", f"cannot connect to port {port} in the sandbox: {describe_os_error(err)}"
        ) from None
    return target


class TcpRelay:
    """Bytes both ways between the node-agent's connection (DATA frames) and a TCP connection inside
    the sandbox, until both directions have ended (END, or the port's end of file) or either fails.

    This thread carries the upstream direction (frames to the port), a second one the downstream
    (the port to frames), each with blocking I/O: a direction waits for its reader rather than
    buffering, and neither can stall the other (a server that writes a whole response before it
    reads on would deadlock against a single thread blocked writing the request).
    """

    def __init__(self, conn: socket.socket, target: socket.socket, port: int) -> None:
        self._conn = conn
        self._target = target
        self._port = port
        self._send_lock = threading.Lock()
        self._failed = False

    def run(self) -> None:
        downstream_done = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            downstream = threading.Thread(target=self._downstream, args=(downstream_done,), daemon=True)
            try:
                downstream.start()
            except RuntimeError:
                raise OpError(
                    "resource_exhausted", "cannot start a thread: the sandbox's process limit is reached"
                ) from None
            try:
                self._upstream()
                if not self._failed:
                    self._await_downstream(downstream_done)
            except OpError as err:
                self._fail(err.code, err.message)
            except (ConnectionClosed, OSError):
                self._abort_target()
                if not self._failed:
                    raise  # the node-agent went away
            finally:
                downstream.join()
        finally:
            os.close(downstream_done)

    def _upstream(self) -> None:
        """Frames from the node-agent to the port: DATA is written, END half-closes."""
        while True:
            frame_type, payload = receive_frame(self._conn)
            if frame_type == protocol.END:
                shutdown(self._target, socket.SHUT_WR)
                return
            if frame_type != protocol.DATA:
                raise invalid(f"a tcp relay carries DATA and END frames, got frame type {frame_type}")
            try:
                self._target.sendall(payload)
            except OSError as err:
                self._fail("unavailable", f"the connection to port {self._port} failed: {describe_os_error(err)}")
                return

    def _await_downstream(self, downstream_done: int) -> None:
        """After END, waits for the port's side to end, noticing meanwhile if the node-agent goes."""
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLIN)
        poller.register(downstream_done, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == downstream_done:
                    return
                frame_type, _ = receive_frame(self._conn)  # raises ConnectionClosed once it is gone
                raise invalid(f"nothing may follow END on a tcp relay, got frame type {frame_type}")

    def _downstream(self, done: int) -> None:
        """Bytes from the port to the node-agent, then END at the port's end of file."""
        try:
            while data := self._target.recv(protocol.CHUNK):
                self._send(protocol.DATA, data)
            self._send(protocol.END)
        except ConnectionClosed:
            self._abort_target()  # the node-agent went away; the upstream side notices too
        except OSError as err:
            self._fail("unavailable", f"the connection to port {self._port} failed: {describe_os_error(err)}")
        finally:
            os.eventfd_write(done, 1)

    def _send(self, frame_type: int, payload: bytes = b"") -> None:
        with self._send_lock:
            if self._failed:
                return
            try:
                send_frame(self._conn, frame_type, payload)
            except OSError:
                raise ConnectionClosed from None

    def _fail(self, code: str, message: str) -> None:
        """Ends the relay with ERROR, once; both directions stop at their next step."""
        with self._send_lock:
            if self._failed:
                return
            self._failed = True
            send_error(self._conn, code, message)
        self._abort_target()
        shutdown(self._conn, socket.SHUT_RD)  # wakes the upstream side blocked reading frames

    def _abort_target(self) -> None:
        shutdown(self._target, socket.SHUT_RDWR)  # wakes the downstream side blocked reading


def shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass  # not connected any more: already shut


# Operations --------------------------------------------------------------------------------------


class Supervisor:
    """What every operation needs: the default user, the reaper, the processes exec calls run in the
    foreground (`track`) and those in the background (`processes`, fed by `pump`).
    """

    def __init__(self, default_user: str, reaper: Reaper) -> None:
        self.default_user = default_user
        self.reaper = reaper
        self.processes = ProcessTable()
        self.pump = OutputPump(self.processes)
        self.terminals = TerminalSupport()
        self._running: set[int] = set()
        self._running_lock = threading.Lock()
        self.listening = ListenerControl()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Condition()

    def connection_opened(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def connection_closed(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)
            self._connections_lock.notify_all()

    def end_connections_but(self, keep: socket.socket, timeout_s: float) -> bool:
        """Ends every other connection and waits until their threads have closed them; False if some
        are still open after `timeout_s`. Their foreground processes go as if their callers had left.
        """
        deadline = time.monotonic() + timeout_s
        with self._connections_lock:
            for conn in self._connections - {keep}:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closing
            while self._connections - {keep}:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._connections_lock.wait(remaining)
        return True

    def track(self, pid: int, running: bool) -> None:
        with self._running_lock:
            if running:
                self._running.add(pid)
            else:
                self._running.discard(pid)

    def is_running(self, pid: int) -> bool:
        with self._running_lock:
            return pid in self._running

    def path(self, request: dict[str, object], name: str = "path") -> str:
        """The request's `name` argument as an absolute path; relative paths start at the default
        user's home.
        """
        raw = request.get(name)
        base = user_home(self.default_user) if isinstance(raw, str) and not raw.startswith("/") else "/"
        return resolve_path(raw, base, name)


def op_ping(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    send_json(conn, protocol.RESULT, {"pid": os.getpid(), "version": PROTOCOL_VERSION})


def op_exec(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    spec = parse_exec_request(request, sup.default_user)
    if spec.background:
        exec_in_background(conn, spec, sup)
        return
    child = start_process(spec, sup.reaper)
    sup.track(child.pid, running=True)
    try:
        send_json(conn, protocol.STARTED, {"pid": child.pid})
        report = ExecRelay(conn, child, spec.timeout_s).run()
    except BaseException:
        # The node-agent is gone or broke the protocol: the process belongs to its call.
        kill_process(child.pid)
        child.notice.wait()
        raise
    finally:
        sup.track(child.pid, running=False)
        child.close()
    send_json(conn, protocol.EXIT, report)


def exec_in_background(conn: socket.socket, spec: ExecSpec, sup: Supervisor) -> None:
    """Starts a process that outlives this connection, which then follows it like an attach."""
    sup.pump.ensure_running()
    if spec.terminal is not None:
        sup.terminals.ensure_probed(sup.reaper)
    child = start_process(spec, sup.reaper)
    process = BackgroundProcess(child, spec, sup.terminals)
    sup.processes.add(process)
    sup.pump.add(process)
    Attachment(conn, process).run(replay=True)


def op_attach(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    pid = int_arg(request, "pid", 0, minimum=1)
    replay = bool_arg(request, "replay", default=True)
    Attachment(conn, sup.processes.get(pid)).run(replay)


def op_processes(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    send_json(conn, protocol.RESULT, {"processes": [process.info() for process in sup.processes.all()]})


def op_signal(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    """Signals the process group of a process an exec started, in the foreground or background."""
    pid = int_arg(request, "pid", 0, minimum=1)
    signum = signal_number(request.get("signal"))
    if sup.is_running(pid):
        kill_process_group(pid, signum)
    elif not sup.processes.get(pid).signal(signum):
        raise OpError("failed_precondition", f"process {pid} has exited")
    send_json(conn, protocol.RESULT, {})


def feed_input(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    pid = int_arg(request, "pid", 0, minimum=1)
    eof = bool_arg(request, "eof")
    process = sup.processes.get(pid)
    while True:
        frame_type, payload = receive_frame(conn)
        if frame_type == protocol.END:
            break
        if frame_type != protocol.DATA:
            raise invalid(f"stdin carries DATA and END frames, got frame type {frame_type}")
        process.input.write(payload, conn)
    if eof:
        process.input.close()


def op_stdin(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    """Writes to a background process's stdin without attaching to it."""
    try:
        feed_input(conn, request, sup)
    except OpError as err:
        send_error(conn, err.code, err.message)
        skip_upload(conn)
        return
    send_json(conn, protocol.RESULT, {})


def op_abandon(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    """Kills a process that an exec call started, on behalf of a caller that gives up on that call.

    Closing the exec connection says the same, but a relay blocked on a process that does not read
    its stdin may not notice a closed connection on every platform (gVisor does not report
    POLLRDHUP), so the node-agent also says it on a connection of its own.
    """
    pid = int_arg(request, "pid", 0, minimum=1)
    running = sup.is_running(pid)
    if running:
        kill_process(pid)
    send_json(conn, protocol.RESULT, {"killed": running})


def open_for_reading(path: str) -> tuple[int, os.stat_result]:
    try:
        # O_NONBLOCK so that opening a FIFO cannot hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise fs_error(err, f"read {path!r}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise invalid(f"cannot read {path!r}: it is a directory; list it instead")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        os.close(fd)
        raise invalid(f"cannot read {path!r}: it is not a regular file")
    os.set_blocking(fd, True)
    return fd, st


def sha256() -> Any:
    import hashlib

    return hashlib.sha256()


def op_read(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    fd, st = open_for_reading(path)
    digest = sha256()
    try:
        send_json(conn, protocol.RESULT, file_info(path, st, OwnerNames()))
        while True:
            try:
                chunk = os.read(fd, protocol.CHUNK)
            except OSError as err:
                raise fs_error(err, f"read {path!r}") from None
            if not chunk:
                break
            digest.update(chunk)
            send_frame(conn, protocol.DATA, chunk)
    finally:
        os.close(fd)
    send_json(conn, protocol.END, {"sha256": digest.hexdigest()})


class Upload:
    """A file being written: data goes to a temporary file next to the target, which replaces the
    target in one rename once complete. An upload that fails leaves the target untouched.
    """

    def __init__(self, path: str, mode: int, owner: Account) -> None:
        self.path = path
        self._owner = owner
        existing_mode = self._existing_mode()  # also refuses a directory as the target
        self._mode = mode or existing_mode
        directory = os.path.dirname(path)
        make_directories(directory, owner)
        # Cut so that the temporary name stays within NAME_MAX whatever the target's name.
        temp_name = f".{os.path.basename(path)[:200]}.{os.urandom(6).hex()}.hutch-upload"
        self._temp_path = os.path.join(directory, temp_name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self._temp_path, flags, TEMP_FILE_MODE)
        self.digest = sha256()

    def _existing_mode(self) -> int:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return NEW_FILE_MODE
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
        return stat.S_IMODE(st.st_mode)

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        os.fchmod(self._fd, self._mode)
        os.fchown(self._fd, self._owner.uid, self._owner.gid)
        os.close(self._fd)
        self._fd = -1
        os.rename(self._temp_path, self.path)

    def discard(self) -> None:
        close_fds(self._fd)
        self._fd = -1
        try:
            os.unlink(self._temp_path)
        except OSError:
            pass


def receive_upload(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> dict[str, object]:
    path = sup.path(request)
    mode = int_arg(request, "mode", 0, minimum=0)
    if mode > 0o7777:
        raise invalid(f'"mode" {oct(mode)} is not a file mode')
    owner = find_account(string_arg(request, "user") or "root")
    max_bytes = int_arg(request, "max_bytes", 0, minimum=0)
    try:
        upload = Upload(path, mode, owner)
    except OSError as err:
        raise fs_error(err, f"write {path!r}") from None
    try:
        size = 0
        while True:
            frame_type, payload = receive_frame(conn)
            if frame_type == protocol.END:
                break
            if frame_type != protocol.DATA:
                raise invalid(f"an upload carries DATA and END frames, got frame type {frame_type}")
            size += len(payload)
            if max_bytes and size > max_bytes:
                raise OpError(
                    "resource_exhausted", f"cannot write {path!r}: larger than the limit of {max_bytes} bytes"
                )
            upload.write(payload)
        upload.commit()
    except OSError as err:
        upload.discard()
        if isinstance(err, ConnectionError):
            raise
        raise fs_error(err, f"write {path!r}") from None
    except BaseException:
        upload.discard()
        raise
    return {**lstat_info(path, OwnerNames()), "sha256": upload.digest.hexdigest()}


def skip_upload(conn: socket.socket) -> None:
    """Reads the rest of a failed upload, so the node-agent gets to read the ERROR frame instead of
    having its writes fail on a closed connection.
    """
    try:
        while receive_frame(conn)[0] != protocol.END:
            pass
    except (ConnectionClosed, protocol.ProtocolError, OSError):
        pass


def op_write(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    try:
        info = receive_upload(conn, request, sup)
    except OpError as err:
        send_error(conn, err.code, err.message)
        skip_upload(conn)
        return
    send_json(conn, protocol.RESULT, info)


def collect_entries(
    directory: str, depth: int, entries: list[dict[str, object]], limit: int, names: OwnerNames
) -> None:
    """Appends the entries under `directory` down to `depth` levels, never following symlinks."""
    try:
        with os.scandir(directory) as listing:
            found = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return  # a subdirectory that vanished or cannot be read is left out
    for entry in found:
        if len(entries) >= limit:
            raise TooManyEntries
        try:
            st = entry.stat(follow_symlinks=False)
            target = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else ""
        except OSError:
            continue  # removed while listing
        entries.append(file_info(entry.path, st, names, target))
        if depth > 1 and stat.S_ISDIR(st.st_mode):
            collect_entries(entry.path, depth - 1, entries, limit, names)


def op_list(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    depth = int_arg(request, "depth", 1, minimum=1)
    limit = int_arg(request, "max_entries", DEFAULT_MAX_LIST_ENTRIES, minimum=1)
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise invalid(f"cannot list {path!r}: it is not a directory")
        os.scandir(path).close()  # surfaces "permission denied" for the directory asked for
    except OSError as err:
        raise fs_error(err, f"list {path!r}") from None
    entries: list[dict[str, object]] = []
    try:
        collect_entries(path, depth, entries, limit, OwnerNames())
    except TooManyEntries:
        raise OpError(
            "resource_exhausted",
            f"{path!r} holds more than {limit} entries within depth {depth}; list a subdirectory or lower the depth",
        ) from None
    send_json(conn, protocol.RESULT, {"entries": entries})


def op_stat(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    try:
        info = lstat_info(path, OwnerNames())
    except OSError as err:
        raise fs_error(err, f"stat {path!r}") from None
    send_json(conn, protocol.RESULT, info)


def remove_path(path: str, recursive: bool) -> None:
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
    elif not recursive:
        os.rmdir(path)
    else:
        parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_tree(parent_fd, os.path.basename(path))
        finally:
            os.close(parent_fd)


def op_remove(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    recursive = bool_arg(request, "recursive")
    if path == "/":
        raise invalid("refusing to remove '/'")
    try:
        remove_path(path, recursive)
    except OSError as err:
        if err.errno == errno.ENOTEMPTY and not recursive:
            raise OpError(
                "failed_precondition", f"cannot remove {path!r}: directory not empty; pass recursive=True"
            ) from None
        raise fs_error(err, f"remove {path!r}") from None
    send_json(conn, protocol.RESULT, {})


def op_rename(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    source = sup.path(request, "source")
    destination = sup.path(request, "destination")
    try:
        make_directories(os.path.dirname(destination))
        os.rename(source, destination)
        info = lstat_info(destination, OwnerNames())
    except OSError as err:
        raise fs_error(err, f"rename {source!r} to {destination!r}") from None
    send_json(conn, protocol.RESULT, info)


def op_mkdir(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    try:
        created = make_directories(path)
        info = lstat_info(path, OwnerNames())
    except FileExistsError:
        raise OpError("already_exists", f"cannot create directory {path!r}: it exists and is not a directory") from None
    except OSError as err:
        raise fs_error(err, f"create directory {path!r}") from None
    send_json(conn, protocol.RESULT, {"info": info, "created": created})


def op_watch(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    recursive = bool_arg(request, "recursive")
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise invalid(f"cannot watch {path!r}: it is not a directory")
        watch = DirectoryWatch(path, recursive)
    except OSError as err:
        raise watch_error(err, path) from None
    try:
        send_json(conn, protocol.RESULT, {})
        relay_watch(conn, watch)
    finally:
        watch.close()


def op_tcp(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    port = int_arg(request, "port", 0, minimum=1)
    if port > 65535:
        raise invalid(f'"port" must be from 1 to 65535, got {port}')
    target = connect_inside(string_arg(request, "host", "127.0.0.1"), port)
    with target:
        send_json(conn, protocol.RESULT, {})
        TcpRelay(conn, target, port).run()


def op_quiesce(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    """Lets go of every socket the host can see, so that gVisor can checkpoint the sandbox: it cannot
    save a socket bound on the host. The listener closes, other connections end; background processes
    and terminals keep running. The answer is followed by this connection's own close, so once the
    caller reads end-of-file nothing host-bound is left open. RELISTEN_SIGNAL brings the listener back.
    """
    sup.listening.close_listener()
    if not sup.end_connections_but(conn, QUIESCE_DRAIN_S):
        sup.listening.reopen()
        raise OpError("unavailable", "connections to the sandbox did not close in time; try again")
    send_json(conn, protocol.RESULT, {})
    raise QuiescedConnection


OPERATIONS: dict[str, Callable[[socket.socket, dict[str, object], Supervisor], None]] = {
    "ping": op_ping,
    "exec": op_exec,
    "attach": op_attach,
    "processes": op_processes,
    "signal": op_signal,
    "stdin": op_stdin,
    "abandon": op_abandon,
    "read": op_read,
    "write": op_write,
    "list": op_list,
    "stat": op_stat,
    "remove": op_remove,
    "rename": op_rename,
    "mkdir": op_mkdir,
    "watch": op_watch,
    "tcp": op_tcp,
    "quiesce": op_quiesce,
}


class QuiescedConnection(Exception):
    """The quiesce operation answered: its connection closes at once, without lingering."""


def serve_connection(conn: socket.socket, sup: Supervisor) -> None:
    """Serves the one operation a connection carries; nothing that happens here ends the supervisor."""
    sup.connection_opened(conn)
    try:
        with conn:
            op = "request"
            try:
                request = receive_request(conn)
                op = str(request["op"])
                operation = OPERATIONS.get(op)
                if operation is None:
                    raise invalid(f"unknown op {op!r}")
                operation(conn, request, sup)
            except QuiescedConnection:
                return
            except OpError as err:
                send_error(conn, err.code, err.message)
            except protocol.ProtocolError as err:
                send_error(conn, "invalid_argument", f"malformed frame: {err}")
            except (ConnectionClosed, ConnectionError):
                pass  # the node-agent went away; there is nobody left to answer
            except OSError as err:
                if err.errno not in (errno.EPIPE, errno.ENOTCONN, errno.EBADF):
                    raise
                return  # ended by quiesce
            except Exception as err:
                log(f"{op} failed: {err!r}")
                send_error(conn, "internal", f"{op} failed unexpectedly: {err}")
            linger(conn)
    finally:
        sup.connection_closed(conn)


def linger(conn: socket.socket) -> None:
    """Ends the connection without losing the last frames sent on it.

    Closing a unix socket while the peer's frames sit unread (a late STDIN_EOF racing a process's
    exit) makes the kernel report ECONNRESET to the peer, which can then miss our final frames.
    So: shut down our side, discard what the peer still sends until it closes, bounded in time.
    """
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(LINGER_S)
        while conn.recv(65536):
            pass
    except OSError:
        pass  # gone already, or too slow to close: either way we are done


# Startup -----------------------------------------------------------------------------------------


def occupy_standard_fds() -> None:
    """Makes sure fds 0-2 are open, so no pipe lands on them: the child's dup2 calls rely on that."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                os.open("/dev/null", os.O_RDWR)  # takes the lowest free fd, which is `fd`
            except OSError:
                os.pipe()


class ListenerControl:
    """Lets an operation thread close the listener the main thread accepts on, and the host's
    RELISTEN_SIGNAL open it again. Both wake the main thread through a pipe it polls beside the listener.
    """

    def __init__(self) -> None:
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = threading.Event()
        self._want_open = threading.Event()
        self._want_open.set()

    @property
    def wake_fd(self) -> int:
        return self._wake_read

    def close_listener(self) -> None:
        """Returns once the main thread has closed the listener."""
        self._want_open.clear()
        self._closed.clear()
        self._poke()
        self._closed.wait()

    def reopen(self) -> None:
        """Asks for the listener back; safe from a signal handler."""
        self._want_open.set()
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def drain(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    @property
    def want_open(self) -> bool:
        return self._want_open.is_set()

    def wait_for_reopen(self) -> None:
        """Blocks (polling the wake pipe) until reopen() or QUIESCE_MAX_S, whichever comes first."""
        self._closed.set()
        deadline = time.monotonic() + QUIESCE_MAX_S
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        while not self._want_open.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log("no word from the host since quiesce; listening again")
                self._want_open.set()
                break
            poller.poll(remaining * 1000)
            self.drain()


def listen(path: str) -> socket.socket:
    try:
        os.unlink(path)  # left over from an earlier run
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)  # the socket file is created 0600: only root may connect
    try:
        listener.bind(path)
    finally:
        os.umask(previous_umask)
    listener.listen(socket.SOMAXCONN)
    return listener


def serve_forever(path: str, sup: Supervisor) -> None:
    """Accepts connections, one thread each; between quiesce and the host's word, listens not at all."""
    control = sup.listening
    while True:
        listener = listen(path)
        try:
            accept_until_quiesced(listener, sup)
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        control.wait_for_reopen()


def accept_until_quiesced(listener: socket.socket, sup: Supervisor) -> None:
    control = sup.listening
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(control.wake_fd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if control.wake_fd in ready:
            control.drain()
            if not control.want_open:
                return
        if listener.fileno() not in ready:
            continue
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        except OSError as err:
            if err.errno not in TRANSIENT_ACCEPT_ERRORS:
                raise
            time.sleep(0.01)
            continue
        conn.setblocking(True)
        try:
            threading.Thread(target=serve_connection, args=(conn, sup), daemon=True).start()
        except RuntimeError:  # no thread to be had right now: this caller has to retry
            conn.close()
            time.sleep(0.01)


def main() -> None:
    socket_path = os.environ.get("HUTCH_SUPERVISOR_SOCKET")
    if not socket_path:
        log("HUTCH_SUPERVISOR_SOCKET is not set")
        sys.exit(2)
    os.umask(0o022)
    # The host stops a sandbox with SIGKILL; anything else sent to PID 1 must not end it.
    for signum in SUPERVISOR_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    occupy_standard_fds()
    reaper = Reaper()
    threading.Thread(target=reaper.run, name="reaper", daemon=True).start()
    sup = Supervisor(os.environ.get("HUTCH_DEFAULT_USER") or "root", reaper)
    signal.signal(RELISTEN_SIGNAL, lambda _signum, _frame: sup.listening.reopen())
    serve_forever(socket_path, sup)


if __name__ == "__main__":
    main()
