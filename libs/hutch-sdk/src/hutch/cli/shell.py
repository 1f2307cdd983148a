"""`hutch shell`: an interactive terminal in a sandbox, in the terminal hutch runs in.

Like ssh: keys go to the remote terminal as typed (Ctrl-C and Ctrl-D included), its output comes
back byte for byte, its size follows the local window, and hutch exits with the remote shell's status.
The main thread waits in select() for keys and for two wake-ups written to a pipe: the window
changed size (SIGWINCH), or the remote terminal ended.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Annotated, Final

import typer

from hutch import ConnectionLostError, HutchError, PtyHandle, Sandbox
from hutch.cli._shared import EXIT_EXEC_FAILED, connected, error_line
from hutch.cli._terminal import raw_mode, window_size, write_all

HELP: Final = (
    "Open an interactive terminal in a sandbox: the user's login shell, or --cmd.\n\n"
    "Keys go to the sandbox as typed, Ctrl-C and Ctrl-D included; the shell's `exit` ends the session, "
    "and hutch exits with its status (125 if hutch itself failed). The terminal outlives a lost "
    "connection: take it up again with --attach PID (`hutch ps` lists terminals)."
)

_RESIZED: Final = b"r"
_ENDED: Final = b"e"
_READ_SIZE: Final = 64 * 1024
# Ctrl-D: what a user at the keyboard sends to say "no more input".
_END_OF_INPUT: Final = b"\x04"


@dataclass
class _Ending:
    code: int | None = None
    error: BaseException | None = None


def _open(box: Sandbox, attach: int | None, cmd: str | None, user: str | None, cwd: str | None, out: int) -> PtyHandle:
    cols, rows = window_size(out, sys.stdin.fileno())

    def show(data: bytes) -> None:
        write_all(out, data)

    if attach is not None:
        handle = box.pty.connect(attach, on_data=show)
        # The terminal keeps the size of whoever used it last; this window's may differ.
        handle.resize(cols, rows)
        return handle
    envs = {"TERM": os.environ.get("TERM") or "xterm-256color"}
    return box.pty.create(cols, rows, on_data=show, cmd=cmd, envs=envs, cwd=cwd, user=user)


def _wait_in_background(handle: PtyHandle, wake: int) -> _Ending:
    ending = _Ending()

    def wait() -> None:
        try:
            ending.code = handle.wait()
        except BaseException as exc:
            ending.error = exc
        finally:
            os.write(wake, _ENDED)

    threading.Thread(target=wait, name="hutch-shell-wait", daemon=True).start()
    return ending


def _pump(handle: PtyHandle, keys: int, out: int, wake: int, ending: _Ending) -> None:
    """Forwards keys and window sizes until the remote terminal ends."""
    reading = True
    while True:
        ready, _, _ = select.select([keys, wake] if reading else [wake], [], [])
        if wake in ready:
            signals = os.read(wake, 64)
            if _ENDED in signals:
                return
            if _RESIZED in signals:
                handle.resize(*window_size(out, keys))
        if keys in ready:
            data = os.read(keys, _READ_SIZE)
            if not data:
                # Input piped in has ended: tell the shell as a user would, then only wait.
                reading = False
                data = _END_OF_INPUT
            try:
                handle.send_input(data)
            except HutchError:
                if ending.code is None and ending.error is None and handle.exit_code is None:
                    raise
                # The terminal ended while these keys were on their way; nobody is left to read them.


def _session(handle: PtyHandle, keys: int, out: int) -> int:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    previous = signal.getsignal(signal.SIGWINCH)

    def on_resize(signum: int, frame: object) -> None:
        try:
            os.write(wake_write, _RESIZED)
        except BlockingIOError:
            # The pipe is full of wake-ups already; one more changes nothing.
            pass

    try:
        ending = _wait_in_background(handle, wake_write)
        with raw_mode(keys) as interactive:
            if interactive:
                signal.signal(signal.SIGWINCH, on_resize)
            _pump(handle, keys, out, wake_read, ending)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(wake_read)
        os.close(wake_write)
    if ending.error is not None:
        raise ending.error
    return ending.code if ending.code is not None else 0


def shell_command(
    sandbox: Annotated[str, typer.Argument(metavar="SANDBOX", help="Sandbox id or name.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="User name or uid; root by default.")] = None,
    cwd: Annotated[
        str | None, typer.Option("--cwd", "-w", help="Working directory; the user's home by default.")
    ] = None,
    cmd: Annotated[
        str | None, typer.Option("--cmd", "-c", help="Run this command line instead of the login shell.")
    ] = None,
    attach: Annotated[
        int | None, typer.Option("--attach", "-a", metavar="PID", help="Take up a running terminal again.")
    ] = None,
) -> None:
    """Open an interactive terminal in a sandbox."""
    if attach is not None and (cmd is not None or user is not None or cwd is not None):
        raise typer.BadParameter("--attach takes up an existing terminal: it cannot be combined with these")
    keys, out = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        with connected(sandbox) as box:
            handle = _open(box, attach, cmd, user, cwd, out)
            code = _session(handle, keys, out)
    except ConnectionLostError as exc:
        where = f"terminal {exc.pid} in sandbox {sandbox}" if exc.pid else f"sandbox {sandbox}"
        error_line(
            f"lost the connection to {where}; it keeps running: take it up again with "
            f"`hutch shell {sandbox} --attach {exc.pid or 'PID'}` ({exc.message})"
        )
        raise typer.Exit(EXIT_EXEC_FAILED) from None
    except HutchError as exc:
        error_line(exc.message)
        raise typer.Exit(EXIT_EXEC_FAILED) from None
    raise typer.Exit(code)
