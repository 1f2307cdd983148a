"""The node-agent's process calls: run (foreground, background, terminal), re-attach, list, signal,
stdin. Each finds the running sandbox and speaks to its supervisor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core import errors
from hutch.core.grpc_runtime import Context
from hutch.v1 import process_pb2
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.sandboxes import SandboxManager
from hutch_node_agent.supervisor.client import Dropped, ExecSession, Exited, Output, ProcessInfo, Started

MAX_BUFFER_BYTES = 4 * 1024 * 1024
MAX_TERMINAL_SIDE = 1000


# Run and Connect share the stdin/signal/resize half of their request streams.
_Input = process_pb2.RunRequest | process_pb2.ConnectRequest


def exec_request(config: process_pb2.ProcessConfig, sandbox: LocalSandbox) -> dict[str, Any]:
    """The supervisor's exec request for a ProcessConfig, with the sandbox's defaults filled in."""
    if not config.args and not config.cmd:
        raise errors.InvalidArgument("a process needs either cmd (a shell command line) or args (an argv)")
    if config.buffer_bytes > MAX_BUFFER_BYTES:
        raise errors.InvalidArgument(f"buffer_bytes may be at most {MAX_BUFFER_BYTES}")
    user = config.user or sandbox.default_user
    # The template's working directory is for its own user; another user starts in their home.
    cwd = config.cwd or (sandbox.workdir if user == sandbox.default_user else "")
    request: dict[str, Any] = {
        "op": "exec",
        "env": {**sandbox.env, **config.envs},
        "cwd": cwd,
        "user": user,
        "timeout_ms": config.timeout_ms,
        "stdin": config.stdin,
        "background": config.background,
    }
    if config.buffer_bytes:
        request["buffer_bytes"] = config.buffer_bytes
    if config.HasField("pty"):
        request["pty"] = {"cols": _side(config.pty.cols, "cols"), "rows": _side(config.pty.rows, "rows")}
    if config.args:
        request["args"] = list(config.args)
    else:
        request["cmd"] = config.cmd
    return request


def _side(value: int, name: str) -> int:
    if not 1 <= value <= MAX_TERMINAL_SIDE:
        raise errors.InvalidArgument(f"a terminal's {name} must be between 1 and {MAX_TERMINAL_SIDE} (got {value})")
    return value


def response(event: Started | Output | Dropped | Exited) -> process_pb2.RunResponse:
    if isinstance(event, Output):
        if event.stream == "stdout":
            return process_pb2.RunResponse(stdout=event.data)
        return process_pb2.RunResponse(stderr=event.data)
    if isinstance(event, Started):
        return process_pb2.RunResponse(
            started=process_pb2.ProcessStarted(pid=event.pid, dropped_bytes=event.dropped_bytes)
        )
    if isinstance(event, Exited):
        exited = process_pb2.ProcessExited(exit_code=event.exit_code, signal=event.signal, timed_out=event.timed_out)
        return process_pb2.RunResponse(exited=exited)
    return process_pb2.RunResponse(dropped_bytes=event.dropped_bytes)


async def relay(requests: AsyncIterator[_Input], session: ExecSession) -> AsyncIterator[process_pb2.RunResponse]:
    """The session's events as responses, while the caller's stdin, signals and sizes flow in."""
    pump = asyncio.create_task(_pump_input(requests, session))
    try:
        async for event in session:
            yield response(event)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


async def _pump_input(requests: AsyncIterator[_Input], session: ExecSession) -> None:
    async for request in requests:
        which = request.WhichOneof("event")
        if which == "stdin":
            await session.send_stdin(request.stdin)
        elif which == "close_stdin":
            await session.close_stdin()
        elif which == "signal":
            await session.send_signal(request.signal.number)
        elif which == "resize":
            await session.send_resize(_side(request.resize.cols, "cols"), _side(request.resize.rows, "rows"))


def process_info(info: ProcessInfo) -> process_pb2.ProcessInfo:
    started = Timestamp()
    started.FromNanoseconds(int(info.started_at * 1e9))
    return process_pb2.ProcessInfo(
        pid=info.pid,
        args=list(info.args),
        cmd=info.cmd or "",
        user=info.user,
        cwd=info.cwd,
        started_at=started,
        running=info.running,
        exit_code=info.exit_code or 0,
        signal=info.signal or 0,
        pty=info.pty,
        dropped_bytes=info.dropped_bytes,
    )


class ProcessCalls:
    """The NodeAgent service's process methods."""

    _manager: SandboxManager

    async def Run(
        self, request_iterator: AsyncIterator[process_pb2.RunRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "start":
            raise errors.InvalidArgument("the first message of Run must be `start` with the process config")
        sandbox = self._manager.running(first.start.sandbox)
        session = await self._manager.supervisor(sandbox.id).exec(exec_request(first.start, sandbox))
        async with session:
            async for message in relay(request_iterator, session):
                yield message

    async def Connect(
        self, request_iterator: AsyncIterator[process_pb2.ConnectRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("event") != "attach":
            raise errors.InvalidArgument("the first message of Connect must be `attach` with the pid")
        attach = first.attach
        self._manager.running(attach.sandbox)
        session = await self._manager.supervisor(attach.sandbox).attach(attach.pid, replay=attach.replay)
        async with session:
            async for message in relay(request_iterator, session):
                yield message

    async def ListProcesses(
        self, request: process_pb2.ListProcessesRequest, context: Context
    ) -> process_pb2.ListProcessesResponse:
        self._manager.running(request.sandbox)
        processes = await self._manager.supervisor(request.sandbox).processes()
        return process_pb2.ListProcessesResponse(processes=[process_info(p) for p in processes])

    async def SendSignal(
        self, request: process_pb2.SendSignalRequest, context: Context
    ) -> process_pb2.SendSignalResponse:
        self._manager.running(request.sandbox)
        await self._manager.supervisor(request.sandbox).signal(request.pid, request.signal)
        return process_pb2.SendSignalResponse()

    async def SendStdin(self, request: process_pb2.SendStdinRequest, context: Context) -> process_pb2.SendStdinResponse:
        self._manager.running(request.sandbox)
        await self._manager.supervisor(request.sandbox).send_stdin(request.pid, request.data, eof=request.eof)
        return process_pb2.SendStdinResponse()
