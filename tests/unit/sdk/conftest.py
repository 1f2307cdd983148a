"""An in-process stand-in for the gateway, so the SDK's streaming and error handling run for real.

It speaks the public protocol on a loopback port from its own thread and event loop, which lets
both the sync API (on the SDK's background loop) and the async API (on the test's loop) use it.
Commands run as host subprocesses and each sandbox's filesystem is a temporary directory: enough
to exercise the SDK, with none of a real sandbox's isolation.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import posixpath
import re
import shutil
import signal
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hutch.v1 import (
    files_pb2,
    files_pb2_grpc,
    process_pb2,
    process_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
)

API_KEY = "hk_unit_test_key"
# Small enough that every file test crosses several chunk boundaries.
READ_CHUNK = 64 * 1024
WRITE_LIMIT = 64 * 1024 * 1024
_NAME = re.compile(r"[a-z0-9-]{1,63}")


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class _Box:
    message: sandbox_pb2.Sandbox
    root: Path
    envs: dict[str, str] = field(default_factory=dict)


class FakeGateway:
    """The gateway's public services over temporary directories and host processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.boxes: dict[str, _Box] = {}
        self._ids = itertools.count(1)
        self.endpoint = ""
        self.api_key = API_KEY

    async def check_key(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {API_KEY}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")

    async def box(self, ref: str, context: grpc.aio.ServicerContext[Any, Any], *, running: bool) -> _Box:
        await self.check_key(context)
        for box in self.boxes.values():
            if ref in (box.message.id, box.message.name):
                if running and box.message.state != sandbox_pb2.SANDBOX_STATE_RUNNING:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"sandbox {ref} is not running")
                return box
        await context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {ref} does not exist")
        raise AssertionError("abort returned")

    def host_path(self, box: _Box, path: str) -> Path:
        absolute = posixpath.normpath(posixpath.join("/root", path))
        return box.root / absolute.lstrip("/")

    def file_info(self, box: _Box, host: Path) -> files_pb2.FileInfo:
        status = host.lstat()
        kind = (
            files_pb2.FILE_TYPE_SYMLINK
            if stat.S_ISLNK(status.st_mode)
            else files_pb2.FILE_TYPE_DIRECTORY
            if stat.S_ISDIR(status.st_mode)
            else files_pb2.FILE_TYPE_FILE
            if stat.S_ISREG(status.st_mode)
            else files_pb2.FILE_TYPE_OTHER
        )
        modified = Timestamp()
        modified.FromNanoseconds(status.st_mtime_ns)
        return files_pb2.FileInfo(
            path="/" + str(host.relative_to(box.root)).removeprefix("."),
            name=host.name,
            type=kind,
            size=status.st_size,
            mode=stat.S_IMODE(status.st_mode),
            modified_at=modified,
            owner="root",
            group="root",
            symlink_target=os.readlink(host) if kind == files_pb2.FILE_TYPE_SYMLINK else "",
        )


class _Sandboxes(sandbox_pb2_grpc.SandboxesServicer):
    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway

    async def Create(self, request: sandbox_pb2.CreateSandboxRequest, context: Any) -> sandbox_pb2.Sandbox:
        gateway = self.gateway
        await gateway.check_key(context)
        if request.template == "needs-a-node":
            # What the real gateway answers when the service behind it is down.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no node is running in region 'local'")
        if request.template not in ("", "base"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"template {request.template!r} does not exist")
        if request.name and not _NAME.fullmatch(request.name):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid name {request.name!r}")
        if request.resources.memory_mb > 65536:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "memory_mb must be at most 65536")
        live = {
            box.message.name for box in gateway.boxes.values() if box.message.state == sandbox_pb2.SANDBOX_STATE_RUNNING
        }
        if request.name and request.name in live:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"a sandbox named {request.name} exists")
        sandbox_id = f"sb-{next(gateway._ids):04d}"
        message = sandbox_pb2.Sandbox(
            id=sandbox_id,
            name=request.name,
            template=request.template or "base",
            state=sandbox_pb2.SANDBOX_STATE_RUNNING,
            resources=request.resources,
            metadata=request.metadata,
            created_at=_now(),
            started_at=_now(),
            timeout_seconds=request.timeout_seconds,
            region="local",
        )
        root = gateway.root / sandbox_id
        (root / "root").mkdir(parents=True)
        (root / "tmp").mkdir()
        gateway.boxes[sandbox_id] = _Box(message, root, dict(request.envs))
        return message

    async def Get(self, request: sandbox_pb2.GetSandboxRequest, context: Any) -> sandbox_pb2.Sandbox:
        return (await self.gateway.box(request.sandbox, context, running=False)).message

    async def List(self, request: sandbox_pb2.ListSandboxesRequest, context: Any) -> sandbox_pb2.ListSandboxesResponse:
        await self.gateway.check_key(context)
        states = set(request.states) or {
            sandbox_pb2.SANDBOX_STATE_PENDING,
            sandbox_pb2.SANDBOX_STATE_RUNNING,
            sandbox_pb2.SANDBOX_STATE_STOPPING,
        }
        matching = [
            box.message
            for box in self.gateway.boxes.values()
            if box.message.state in states
            and all(box.message.metadata.get(k) == v for k, v in request.metadata.items())
        ]
        # Pages of two, so listing more than two sandboxes has to follow page tokens.
        start = int(request.page_token or 0)
        page = matching[start : start + 2]
        token = str(start + 2) if start + 2 < len(matching) else ""
        return sandbox_pb2.ListSandboxesResponse(sandboxes=page, next_page_token=token)

    async def Kill(self, request: sandbox_pb2.KillSandboxRequest, context: Any) -> sandbox_pb2.Sandbox:
        box = await self.gateway.box(request.sandbox, context, running=False)
        if box.message.state == sandbox_pb2.SANDBOX_STATE_KILLED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"sandbox {request.sandbox} is already killed")
        box.message.state = sandbox_pb2.SANDBOX_STATE_KILLED
        box.message.state_reason = "killed on request"
        box.message.ended_at.CopyFrom(_now())
        return box.message


class _Processes(process_pb2_grpc.ProcessesServicer):
    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway

    async def Run(  # type: ignore[override]
        self, request_iterator: AsyncIterator[process_pb2.RunRequest], context: Any
    ) -> AsyncIterator[process_pb2.RunResponse]:
        first = await anext(request_iterator)
        config = first.start
        box = await self.gateway.box(config.sandbox, context, running=True)
        argv = list(config.args) or ["/bin/sh", "-c", config.cmd]
        cwd = self.gateway.host_path(box, config.cwd or "/root")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **box.envs, **config.envs}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.PIPE if config.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot start {argv[0]}: {exc.strerror}")
            raise
        yield process_pb2.RunResponse(started=process_pb2.ProcessStarted(pid=process.pid))
        events: asyncio.Queue[process_pb2.RunResponse | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
            assert stream is not None
            while chunk := await stream.read(READ_CHUNK):
                await events.put(process_pb2.RunResponse(**{name: chunk}))
            await events.put(None)

        async def feed() -> None:
            async for request in request_iterator:
                if process.stdin is None:
                    continue
                if request.WhichOneof("event") == "stdin":
                    process.stdin.write(request.stdin)
                    try:
                        await process.stdin.drain()
                    except ConnectionResetError:
                        return
                elif request.WhichOneof("event") == "close_stdin":
                    process.stdin.close()

        async def wait() -> process_pb2.ProcessExited:
            limit = config.timeout_ms / 1000 or None
            try:
                code = await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                return process_pb2.ProcessExited(exit_code=-1, signal=signal.SIGKILL, timed_out=True)
            if code < 0:
                return process_pb2.ProcessExited(exit_code=-1, signal=-code)
            return process_pb2.ProcessExited(exit_code=code)

        tasks = [
            asyncio.create_task(pump(process.stdout, "stdout")),
            asyncio.create_task(pump(process.stderr, "stderr")),
            asyncio.create_task(feed()),
        ]
        waiter = asyncio.create_task(wait())
        try:
            ended = 0
            while ended < 2:
                event = await events.get()
                if event is None:
                    ended += 1
                else:
                    yield event
            yield process_pb2.RunResponse(exited=await waiter)
        finally:
            for task in [*tasks, waiter]:
                task.cancel()
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


class _Files(files_pb2_grpc.FilesServicer):
    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway

    async def _existing(self, sandbox: str, path: str, context: Any) -> tuple[_Box, Path]:
        box = await self.gateway.box(sandbox, context, running=True)
        host = self.gateway.host_path(box, path)
        if not host.exists() and not host.is_symlink():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{path} does not exist")
        return box, host

    async def Read(  # type: ignore[override]
        self, request: files_pb2.ReadFileRequest, context: Any
    ) -> AsyncIterator[files_pb2.ReadFileResponse]:
        box, host = await self._existing(request.sandbox, request.path, context)
        yield files_pb2.ReadFileResponse(info=self.gateway.file_info(box, host))
        with host.open("rb") as source:
            while chunk := source.read(READ_CHUNK):
                yield files_pb2.ReadFileResponse(data=chunk)

    async def Write(  # type: ignore[override]
        self, request_iterator: AsyncIterator[files_pb2.WriteFileRequest], context: Any
    ) -> files_pb2.FileInfo:
        header = (await anext(request_iterator)).header
        box = await self.gateway.box(header.sandbox, context, running=True)
        if header.size > WRITE_LIMIT:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{header.size} bytes is over the limit")
        host = self.gateway.host_path(box, header.path)
        host.parent.mkdir(parents=True, exist_ok=True)
        partial = host.with_name(host.name + ".partial")
        with partial.open("wb") as sink:
            async for request in request_iterator:
                sink.write(request.data)
        partial.chmod(header.mode or 0o644)
        partial.replace(host)
        return self.gateway.file_info(box, host)

    async def List(self, request: files_pb2.ListDirRequest, context: Any) -> files_pb2.ListDirResponse:
        box, host = await self._existing(request.sandbox, request.path, context)
        entries: list[files_pb2.FileInfo] = []

        def walk(directory: Path, depth: int) -> None:
            for child in sorted(directory.iterdir()):
                entries.append(self.gateway.file_info(box, child))
                if depth > 1 and child.is_dir() and not child.is_symlink():
                    walk(child, depth - 1)

        walk(host, request.depth or 1)
        return files_pb2.ListDirResponse(entries=entries)

    async def Stat(self, request: files_pb2.StatRequest, context: Any) -> files_pb2.FileInfo:
        box, host = await self._existing(request.sandbox, request.path, context)
        return self.gateway.file_info(box, host)

    async def Remove(self, request: files_pb2.RemoveRequest, context: Any) -> files_pb2.RemoveResponse:
        _, host = await self._existing(request.sandbox, request.path, context)
        if host.is_dir() and not host.is_symlink():
            if any(host.iterdir()) and not request.recursive:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.path} is not empty")
            shutil.rmtree(host)
        else:
            host.unlink()
        return files_pb2.RemoveResponse()

    async def Rename(self, request: files_pb2.RenameRequest, context: Any) -> files_pb2.FileInfo:
        box, host = await self._existing(request.sandbox, request.source, context)
        target = self.gateway.host_path(box, request.destination)
        host.replace(target)
        return self.gateway.file_info(box, target)

    async def MakeDir(self, request: files_pb2.MakeDirRequest, context: Any) -> files_pb2.MakeDirResponse:
        box = await self.gateway.box(request.sandbox, context, running=True)
        host = self.gateway.host_path(box, request.path)
        created = not host.exists()
        host.mkdir(parents=True, exist_ok=True)
        return files_pb2.MakeDirResponse(info=self.gateway.file_info(box, host), created=created)


class _ServerThread:
    def __init__(self, gateway: FakeGateway) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-gateway", daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(gateway), self.loop).result()

    async def _start(self, gateway: FakeGateway) -> grpc.aio.Server:
        server = grpc.aio.server()
        sandbox_pb2_grpc.add_SandboxesServicer_to_server(_Sandboxes(gateway), server)
        process_pb2_grpc.add_ProcessesServicer_to_server(_Processes(gateway), server)
        files_pb2_grpc.add_FilesServicer_to_server(_Files(gateway), server)
        port = server.add_insecure_port("127.0.0.1:0")
        gateway.endpoint = f"127.0.0.1:{port}"
        await server.start()
        return server

    async def _stop(self) -> None:
        await self.server.stop(1.0)
        # Calls whose clients went away may still have tasks; ending them here keeps them from being
        # torn down noisily when the loop closes.
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGateway]:
    """A fake gateway on a loopback port, shared by the whole session."""
    fake = FakeGateway(tmp_path_factory.mktemp("fake-gateway"))
    server = _ServerThread(fake)
    try:
        yield fake
    finally:
        server.stop()


@pytest.fixture
def connection(gateway: FakeGateway) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the fake gateway."""
    return {"api_key": gateway.api_key, "endpoint": gateway.endpoint}


@pytest.fixture
def hutch_env(gateway: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Points the environment at the fake gateway, with an empty HUTCH_HOME so no real config leaks in."""
    env = {"HUTCH_ENDPOINT": gateway.endpoint, "HUTCH_API_KEY": API_KEY, "HUTCH_HOME": str(tmp_path / "home")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUTCH_INSECURE", raising=False)
    return {**os.environ, **env}
