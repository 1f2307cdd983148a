"""Watching a directory in a sandbox for changes: `sandbox.files.watch_dir(path)`."""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeAlias

import grpc
import grpc.aio

from hutch._callbacks import CallbackThread
from hutch._connection import Connection
from hutch._follow import Changes
from hutch._portal import PORTAL
from hutch.exceptions import ConnectionLostError, InternalError
from hutch.models import FilesystemEvent
from hutch.v1 import files_pb2

__all__ = ["AsyncWatchHandle", "EventHandler", "WatchHandle"]

EventHandler: TypeAlias = Callable[[FilesystemEvent], object]
"""Receives each filesystem event. With AsyncSandbox it may be a coroutine function."""

_Call: TypeAlias = grpc.aio.UnaryStreamCall[files_pb2.WatchDirRequest, files_pb2.FilesystemEvent]
_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


async def start_watch(
    connection: Connection, sandbox_id: str, path: str, recursive: bool, on_event: EventHandler | None
) -> AsyncWatchHandle:
    """Opens a watch and returns once the sandbox confirms it is in place.

    Raises:
        NotFoundError: The directory does not exist.
        HutchError: Another failure; the subclass says which.
    """
    doing = f"watch {path} in sandbox {sandbox_id}"
    call = connection.files.Watch(
        files_pb2.WatchDirRequest(sandbox=sandbox_id, path=path, recursive=recursive), metadata=connection.metadata
    )
    try:
        with connection.translated(doing):
            first = await call.read()
        if not isinstance(first, files_pb2.FilesystemEvent):
            raise InternalError(f"{doing}: the gateway ended the watch before it was in place")
        if first.type != files_pb2.FILESYSTEM_EVENT_TYPE_WATCHING:
            raise InternalError(f"{doing}: the gateway sent an event before confirming the watch")
    except BaseException:
        call.cancel()
        raise
    return AsyncWatchHandle(connection, call, on_event, doing)


class AsyncWatchHandle:
    """A watch on a directory, driven with async/await.

    Every change made after `watch_dir` returned is reported. Events go to the `on_event` handler
    given to `watch_dir`; without one, iterate the handle (`async for event in handle`). `stop()`
    ends the watch.
    """

    def __init__(self, connection: Connection, call: _Call, on_event: EventHandler | None, doing: str) -> None:
        self._connection = connection
        self._call = call
        self._on_event = on_event
        self._doing = doing
        self._unread: collections.deque[FilesystemEvent] = collections.deque()
        self._error: BaseException | None = None
        self._stopped = False
        self._changes = Changes()
        self._task = asyncio.create_task(self._read(), name="hutch-watch")

    async def _read(self) -> None:
        try:
            # read(), not iteration: gRPC refuses to mix the two on one call, and the first was read.
            while isinstance(message := await self._call.read(), files_pb2.FilesystemEvent):
                event = FilesystemEvent.from_proto(message)
                if event is None:
                    continue
                if self._on_event is None:
                    self._unread.append(event)
                else:
                    result = self._on_event(event)
                    if inspect.isawaitable(result):
                        await result
                self._changes.notify()
            if not self._stopped:
                self._error = self._lost("the gateway ended the watch")
        except asyncio.CancelledError:
            if not self._stopped:
                self._error = self._lost("the channel to the gateway was closed")
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _LOST:
                self._error = self._lost(exc.details() or exc.code().name.lower())
            else:
                self._error = self._connection.error(exc, self._doing)
        except Exception as exc:
            # `on_event` raised: the watch ends, and iteration or `stop` hands the exception on.
            self._error = exc
        finally:
            self._call.cancel()
            self._changes.notify()

    def _lost(self, detail: str) -> ConnectionLostError:
        return ConnectionLostError(
            f"{self._doing}: the connection to the watch was lost ({detail}); changes from now on are "
            "not seen: call watch_dir again"
        )

    @property
    def running(self) -> bool:
        """Whether the watch still reports changes."""
        return not self._task.done()

    async def __aiter__(self) -> AsyncIterator[FilesystemEvent]:
        """Yields events (when no `on_event` was given) until the watch is stopped.

        Raises:
            ConnectionLostError: The connection to the watch was lost.
            Exception: What `on_event` raised.
        """
        while True:
            while self._unread:
                yield self._unread.popleft()
            if self._task.done():
                break
            await self._changes.wait()
        if self._error is not None:
            raise self._error

    def get_new_events(self) -> list[FilesystemEvent]:
        """Takes the events that arrived since the last call (or iteration step) without waiting.

        Only collects events when no `on_event` was given.

        Raises:
            ConnectionLostError: The watch was lost and no events are left to take.
            Exception: What `on_event` raised.
        """
        events = list(self._unread)
        self._unread.clear()
        if not events and self._task.done() and self._error is not None:
            raise self._error
        return events

    async def stop(self) -> None:
        """Ends the watch.

        Raises:
            ConnectionLostError: The watch had already been lost, so changes may have been missed.
            Exception: What `on_event` raised, if it ended the watch.
        """
        if not self._task.done():
            self._stopped = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._error is not None:
            raise self._error

    async def __aenter__(self) -> AsyncWatchHandle:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            await self.stop()
        except Exception:
            # The block's own exception matters more than how the watch ended.
            if exc is None:
                raise


class WatchHandle:
    """A watch on a directory.

    Every change made after `watch_dir` returned is reported. Events go to the `on_event` handler
    given to `watch_dir`, which runs in a thread of the handle's own, one event at a time, in order;
    without one, iterate the handle (`for event in handle`). `stop()` ends the watch.
    """

    def __init__(self, handle: AsyncWatchHandle, callbacks: CallbackThread | None = None) -> None:
        self._async = handle
        # Kept with the handle for as long as its handler may run.
        self._callbacks = callbacks

    @property
    def running(self) -> bool:
        """Whether the watch still reports changes."""
        return self._async.running

    def __iter__(self) -> Iterator[FilesystemEvent]:
        """Yields events (when no `on_event` was given) until the watch is stopped.

        Raises:
            ConnectionLostError: The connection to the watch was lost.
            Exception: What `on_event` raised.
        """
        return PORTAL.iterate(aiter(self._async))

    def get_new_events(self) -> list[FilesystemEvent]:
        """Takes the events that arrived since the last call (or iteration step) without waiting.

        Only collects events when no `on_event` was given.

        Raises:
            ConnectionLostError: The watch was lost and no events are left to take.
            Exception: What `on_event` raised.
        """

        async def take() -> list[FilesystemEvent]:
            # On the loop's thread, where the handle's state changes.
            return self._async.get_new_events()

        return PORTAL.run(take())

    def stop(self) -> None:
        """Ends the watch.

        Raises:
            ConnectionLostError: The watch had already been lost, so changes may have been missed.
            Exception: What `on_event` raised, if it ended the watch.
        """
        PORTAL.run(self._async.stop())

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        PORTAL.run(self._async.__aexit__(exc_type, exc, tb))
