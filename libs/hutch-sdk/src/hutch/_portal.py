"""The bridge that gives the synchronous API its asynchronous implementation.

The sync classes run the async implementation on one event loop owned by a daemon thread, started
on first use and stopped at interpreter exit. Running on a separate loop, rather than `asyncio.run`
per call, keeps channels alive between calls and works even when the caller's thread already runs an
event loop (a notebook, an async framework).

Callbacks the caller passes (output handlers) must run in the caller's thread, as the
caller would expect of a synchronous API: the async side hands each callback invocation over to the
waiting caller thread, which runs it and reports back. The async side waits for that report, which
gives natural backpressure, and an exception raised by a callback travels back into the async code
as if the callback had raised it there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Final, Protocol, TypeVar

_T = TypeVar("_T")
_Item = TypeVar("_Item")

# How long interpreter exit waits for the loop to wind down before leaving the daemon thread behind.
_SHUTDOWN_WAIT_S: Final = 5.0


class Relay(Protocol):
    """Wraps a caller's callback so the async side can call it from the loop thread."""

    def __call__(self, callback: Callable[[_Item], object], /) -> Callable[[_Item], Awaitable[None]]:
        """Returns a function that runs `callback` in the caller's thread and resolves when it has."""
        ...


class _Job:
    def __init__(self, work: Callable[[], object], done: asyncio.Future[None]) -> None:
        self.work = work
        self.done = done


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class Portal:
    """Runs coroutines on a process-wide event loop in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._registered = False
        self._shut_down = False

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("the Hutch SDK's event loop has shut down because the interpreter is exiting")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._serve, args=(loop,), name="hutch-sdk", daemon=True)
                thread.start()
                if not self._registered:
                    atexit.register(self.shutdown)
                    self._registered = True
                self._loop, self._thread = loop, thread
            elif self._thread is threading.current_thread():
                raise RuntimeError(
                    "the synchronous Hutch API was called from inside its own event loop (from async "
                    "code it runs); use AsyncSandbox there"
                )
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs the coroutine on the loop and returns its result in the calling thread.

        Interrupting the wait (Ctrl-C) cancels the coroutine, and with it any call it has open.

        Args:
            coroutine: The work to run.

        Returns:
            The coroutine's result; its exception is raised here instead.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self._ensure_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def run_relaying(self, start: Callable[[Relay], Coroutine[Any, Any, _T]]) -> _T:
        """Like `run`, for work that calls the caller's callbacks.

        Args:
            start: Given a `Relay`, returns the coroutine to run; the coroutine calls the caller's
                callbacks only through functions the relay made, and awaits what they return.

        Returns:
            The coroutine's result.
        """
        loop = self._ensure_loop()
        inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

        def relay(callback: Callable[[_Item], object]) -> Callable[[_Item], Awaitable[None]]:
            def hand_over(item: _Item) -> Awaitable[None]:
                done: asyncio.Future[None] = loop.create_future()
                inbox.put(_Job(functools.partial(callback, item), done))
                return done

            return hand_over

        future = asyncio.run_coroutine_threadsafe(start(relay), loop)
        future.add_done_callback(lambda _: inbox.put(None))
        try:
            while (job := inbox.get()) is not None:
                error: Exception | None = None
                try:
                    job.work()
                except Exception as exc:
                    error = exc
                loop.call_soon_threadsafe(_settle, job.done, error)
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def iterate(self, iterator: AsyncIterator[_T]) -> Iterator[_T]:
        """Drives an async iterator from the calling thread, one item per step.

        Leaving the loop early closes the async iterator, which releases what it holds.

        Args:
            iterator: An async iterator made on this portal's loop.

        Yields:
            Its items.
        """
        end = object()

        async def step() -> Any:
            try:
                return await anext(iterator)
            except StopAsyncIteration:
                return end

        async def close() -> None:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while (item := self.run(step())) is not end:
                yield item
        finally:
            if self._callable_from_here():
                self.run(close())
            # Otherwise this runs as garbage collection on the loop's own thread, or at interpreter
            # exit after the loop stopped; the loop's async generator hooks close the iterator then.

    def _callable_from_here(self) -> bool:
        with self._lock:
            return not self._shut_down and self._loop is not None and self._thread is not threading.current_thread()

    def shutdown(self) -> None:
        """Cancels what still runs on the loop and stops its thread, for good; runs at interpreter exit."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = None
            self._shut_down = True
        if loop is None or thread is None or loop.is_closed():
            return

        async def wind_down() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result(_SHUTDOWN_WAIT_S)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_SHUTDOWN_WAIT_S)


PORTAL: Final = Portal()
