"""Where the synchronous API runs the callbacks of a handle that outlives the call that made it.

`Commands.run` runs its callbacks in the caller's thread because the caller waits there until the
command ends. A handle (a background command, a terminal, a watch) returns at once, and the caller's
thread goes on with other work, so its callbacks need a thread of their own: each handle gets one,
which runs them one at a time, in the order the data arrived. The async side waits until a callback
has run before it reads on, which bounds what piles up behind a slow callback, and a callback's
exception travels back into the async side as if raised there.

The thread exists only while there is work: it ends after a few idle seconds and is started again by
the next callback, so a forgotten handle does not pin a thread for good.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

_Item = TypeVar("_Item")

# How long the thread waits for more work before it ends.
_IDLE_S: Final = 5.0


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


class CallbackThread:
    """Runs one handle's callbacks, one at a time, in a thread of its own.

    Args:
        name: The thread's name, for debuggers and thread dumps.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def relay(self, callback: Callable[[_Item], object]) -> Callable[[_Item], Awaitable[None]]:
        """Wraps `callback` for the async side: calling the result queues the callback's run here.

        Args:
            callback: The caller's function.

        Returns:
            A function to call on the event loop; what it returns resolves once the callback has
            run, with the callback's exception if it raised one.
        """

        def hand_over(item: _Item) -> Awaitable[None]:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            with self._lock:
                self._jobs.put(_Job(functools.partial(callback, item), done))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                    self._thread.start()
            return done

        return hand_over

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:
                    # New work is queued under the same lock, so it is either seen here or starts a
                    # new thread after this one has let go.
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            error: Exception | None = None
            try:
                job.work()
            except Exception as exc:
                error = exc
            try:
                job.done.get_loop().call_soon_threadsafe(_settle, job.done, error)
            except RuntimeError:
                # The loop has closed (the interpreter is exiting): nobody waits for the result.
                pass
