"""Runs one command over the Processes.Run stream, passing its raw output bytes to callbacks.

`AsyncCommands.run` decodes the bytes and builds a `CommandResult`; `hutch exec` copies them to its
own stdout and stderr untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from hutch._connection import Connection
from hutch._sources import ByteSource, iter_chunks
from hutch.exceptions import InternalError
from hutch.v1 import process_pb2

ByteHandler = Callable[[bytes], object]


@dataclass(frozen=True)
class ProcessOutcome:
    """How a command ended.

    Attributes:
        exit_code: The exit status; 128 + signal when a signal ended it.
        signal: The signal that ended it, or 0.
        timed_out: Whether it was killed for exceeding its timeout.
    """

    exit_code: int
    signal: int
    timed_out: bool

    @classmethod
    def from_proto(cls, exited: process_pb2.ProcessExited) -> ProcessOutcome:
        """Converts ProcessExited, reporting a signal death as 128 + signal the way shells do."""
        code = 128 + exited.signal if exited.signal else exited.exit_code
        return cls(exit_code=code, signal=exited.signal, timed_out=exited.timed_out)


async def _deliver(handler: ByteHandler | None, data: bytes) -> None:
    if handler is not None:
        result = handler(data)
        if inspect.isawaitable(result):
            await result


async def run_process(
    connection: Connection,
    config: process_pb2.ProcessConfig,
    *,
    stdin: ByteSource | None,
    on_stdout: ByteHandler | None,
    on_stderr: ByteHandler | None,
    doing: str,
) -> ProcessOutcome:
    """Starts a command, streams its stdin and output, and waits for it to end.

    Args:
        connection: The channel to the gateway.
        config: The command; `config.stdin` must be set exactly when `stdin` is given.
        stdin: Data sent to the command, after which its stdin is closed; None for /dev/null.
        on_stdout: Called with each chunk of standard output, in order; may return an awaitable.
        on_stderr: The same for standard error.
        doing: What this is, for error messages.

    Returns:
        How the command ended.

    Raises:
        HutchError: The call failed; the subclass says why.
        Exception: Whatever a handler or reading `stdin` raised; the command is then abandoned.
    """
    call = connection.processes.Run(None, metadata=connection.metadata)
    feeder: asyncio.Task[None] | None = None
    stdin_failure: list[BaseException] = []

    async def feed(source: ByteSource) -> None:
        try:
            async for chunk in iter_chunks(source):
                await call.write(process_pb2.RunRequest(stdin=chunk))
            await call.write(process_pb2.RunRequest(close_stdin=True))
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            # The call has ended; the response side reports how.
            return
        except Exception as exc:
            stdin_failure.append(exc)
            call.cancel()

    outcome: ProcessOutcome | None = None
    try:
        with connection.translated(doing):
            with contextlib.suppress(asyncio.InvalidStateError):
                # Raised when the gateway already ended the call (e.g. a rejected key); reading the
                # responses below reports the status it ended with.
                await call.write(process_pb2.RunRequest(start=config))
            if stdin is not None:
                feeder = asyncio.create_task(feed(stdin))
            async for response in call:
                event = response.WhichOneof("event")
                if event == "stdout":
                    await _deliver(on_stdout, response.stdout)
                elif event == "stderr":
                    await _deliver(on_stderr, response.stderr)
                elif event == "exited":
                    outcome = ProcessOutcome.from_proto(response.exited)
    except asyncio.CancelledError:
        # The feeder cancels the call when reading stdin fails; that failure is the real error,
        # unless this task itself is being cancelled.
        current = asyncio.current_task()
        if stdin_failure and current is not None and not current.cancelling():
            raise stdin_failure[0] from None
        raise
    finally:
        call.cancel()
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
    if outcome is None:
        raise InternalError(f"{doing}: the gateway ended the output stream before the command exited")
    return outcome
