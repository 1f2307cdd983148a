"""The supervisor: PID 1 of every sandbox.

It listens on the unix socket named by HUTCH_SUPERVISOR_SOCKET and serves one operation per
connection with the frames defined in protocol.py: it runs processes (exec) and works on files
(read, write, list, stat, remove, rename, mkdir) from inside the sandbox's own namespaces, so paths
and users are the sandbox's. As PID 1 it also reaps every process that exits in the sandbox,
including orphans re-parented to it.

It runs on the private runtime built by bundle.py, which copies exactly the modules this file
imports: it uses nothing but the standard library and imports everything at module level. The
sandbox is ready once this listens, so startup stays lean: no asyncio, one thread per connection
plus one reaper thread.

Processes are started with fork + exec rather than subprocess, whose own waitpid would race the
reaper. A process runs in its own session and process group; signals, timeouts and a closed
connection act on the whole group.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable

try:
    from . import protocol
except ImportError:  # run as a script: the bundle puts protocol.py next to this file
    import protocol  # type: ignore[no-redef, import-not-found]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MAX_LIST_ENTRIES = 10000
PROTOCOL_VERSION = 1
# When the supervisor has no children the reaper sleeps this long between checks; a process that
# joined the sandbox from outside (crun exec) and was orphaned is reaped within this delay.
IDLE_REAP_INTERVAL_S = 1.0
# After the main process exits, at most this many chunks per stream are still forwarded: output
# already in the pipe belongs to the call, a grandchild that keeps writing does not.
DRAIN_CHUNKS = 16
# How long a finished connection waits for the node-agent to close its side (see linger()).
LINGER_S = 5.0
# accept() errors that say "not now" rather than "this socket is broken".
TRANSIENT_ACCEPT_ERRORS = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
}
SUPERVISOR_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
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


def bool_arg(request: dict[str, object], name: str) -> bool:
    value = request.get(name, False)
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
    """A validated exec request: what to run, as whom, where, with what and for how long."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        account: Account,
        timeout_s: float,
        stdin: bool,
    ) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.account = account
        self.timeout_s = timeout_s
        self.stdin = stdin
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


def parse_exec_request(request: dict[str, object], default_user: str) -> ExecSpec:
    argv = parse_argv(request)
    env = parse_env(request)
    account = find_account(string_arg(request, "user") or default_user)
    cwd = string_arg(request, "cwd")
    if cwd:
        cwd = resolve_path(cwd, user_home(default_user), "cwd")
    else:
        cwd = account.home if os.path.isdir(account.home) else "/"
    timeout_s = int_arg(request, "timeout_ms", 0, minimum=0) / 1000
    # What a login would set; the request's own values win.
    env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name, **env}
    return ExecSpec(argv, env, cwd, account, timeout_s, bool_arg(request, "stdin"))


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


def start_process(spec: ExecSpec, reaper: Reaper) -> Child:
    """Forks and execs the process described by `spec`; raises OpError if it does not start."""
    fds: list[int] = []
    try:
        for _ in range(4):
            fds.extend(os.pipe2(os.O_CLOEXEC))
    except OSError as err:
        close_fds(*fds)
        raise start_error(err) from None
    stdin_read, stdin_write, stdout_read, stdout_write, stderr_read, stderr_write, report_read, report_write = fds
    try:
        pid, notice = reaper.start(lambda: fork_child(spec, stdin_read, stdout_write, stderr_write, report_write))
    except BaseException as err:
        close_fds(stdin_write, stdout_read, stderr_read, report_read)
        if isinstance(err, OSError):
            raise start_error(err) from None
        raise
    finally:
        close_fds(stdin_read, stdout_write, stderr_write, report_write)  # the child's ends
    failure = read_to_end(report_read)
    os.close(report_read)
    child = Child(pid, stdin_write, stdout_read, stderr_read, notice)
    if failure:
        notice.wait()
        child.close()
        code, _, message = failure.decode(errors="replace").partition("\n")
        raise OpError(code, message)
    if spec.stdin:
        os.set_blocking(stdin_write, False)  # a process that does not read must not block the relay
    else:
        child.close_stdin()  # the process sees end-of-file at once
    return child


def exit_report(status: int, timed_out: bool) -> dict[str, object]:
    if os.WIFSIGNALED(status):
        return {"exit_code": -1, "signal": os.WTERMSIG(status), "timed_out": timed_out}
    return {"exit_code": os.WEXITSTATUS(status), "signal": 0, "timed_out": timed_out}


def parse_signal(payload: bytes) -> int:
    signum = decode_object(payload, "SIGNAL frame").get("signal")
    if not isinstance(signum, int) or isinstance(signum, bool) or not 0 < signum < signal.NSIG:
        raise invalid(f'"signal" must be a signal number between 1 and {signal.NSIG - 1}')
    return signum


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


# Operations --------------------------------------------------------------------------------------


class Supervisor:
    """What every operation needs: the default user, the reaper, the processes exec calls run."""

    def __init__(self, default_user: str, reaper: Reaper) -> None:
        self.default_user = default_user
        self.reaper = reaper
        self._running: set[int] = set()
        self._running_lock = threading.Lock()

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


def op_read(conn: socket.socket, request: dict[str, object], sup: Supervisor) -> None:
    path = sup.path(request)
    fd, st = open_for_reading(path)
    try:
        send_json(conn, protocol.RESULT, file_info(path, st, OwnerNames()))
        while True:
            try:
                chunk = os.read(fd, protocol.CHUNK)
            except OSError as err:
                raise fs_error(err, f"read {path!r}") from None
            if not chunk:
                break
            send_frame(conn, protocol.DATA, chunk)
    finally:
        os.close(fd)
    send_frame(conn, protocol.END)


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

    def _existing_mode(self) -> int:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return NEW_FILE_MODE
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
        return stat.S_IMODE(st.st_mode)

    def write(self, data: bytes) -> None:
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
    return lstat_info(path, OwnerNames())


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


OPERATIONS: dict[str, Callable[[socket.socket, dict[str, object], Supervisor], None]] = {
    "ping": op_ping,
    "exec": op_exec,
    "abandon": op_abandon,
    "read": op_read,
    "write": op_write,
    "list": op_list,
    "stat": op_stat,
    "remove": op_remove,
    "rename": op_rename,
    "mkdir": op_mkdir,
}


def serve_connection(conn: socket.socket, sup: Supervisor) -> None:
    """Serves the one operation a connection carries; nothing that happens here ends the supervisor."""
    with conn:
        op = "request"
        try:
            request = receive_request(conn)
            op = str(request["op"])
            operation = OPERATIONS.get(op)
            if operation is None:
                raise invalid(f"unknown op {op!r}")
            operation(conn, request, sup)
        except OpError as err:
            send_error(conn, err.code, err.message)
        except protocol.ProtocolError as err:
            send_error(conn, "invalid_argument", f"malformed frame: {err}")
        except (ConnectionClosed, ConnectionError):
            pass  # the node-agent went away; there is nobody left to answer
        except Exception as err:
            log(f"{op} failed: {err!r}")
            send_error(conn, "internal", f"{op} failed unexpectedly: {err}")
        linger(conn)


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


def accept_forever(listener: socket.socket, sup: Supervisor) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as err:
            if err.errno not in TRANSIENT_ACCEPT_ERRORS:
                raise
            time.sleep(0.01)
            continue
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
    accept_forever(listen(socket_path), sup)


if __name__ == "__main__":
    main()
