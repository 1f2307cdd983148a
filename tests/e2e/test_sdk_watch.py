"""Watching directories through the Python SDK against the whole local stack.

Changes are made with shell commands inside the sandbox, as programs there would make them
(`files.write` replaces files atomically through a temporary file, which is a different sequence of
events). Filesystems may report one change as several events (a write is a create and a modify), so
the tests look for the expected events in order, not for an exact list.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hutch import AsyncSandbox, FilesystemEvent, NotFoundError, Sandbox, SandboxError, WatchHandle
from hutch.testing import eventually_sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    """Keyword arguments that point SDK calls at the local stack."""
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module", params=["container", "gvisor"])
def sandbox(request: pytest.FixtureRequest, connection: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox per isolation class: watches must behave the same under both."""
    box = Sandbox.create(metadata={"suite": "e2e-watch"}, isolation=request.param, **connection)
    try:
        yield box
    finally:
        try:
            box.kill()
        except (NotFoundError, SandboxError):
            pass
        finally:
            box.close()


@pytest.fixture
def directory(sandbox: Sandbox) -> str:
    path = f"/tmp/watched-{uuid.uuid4().hex[:10]}"
    sandbox.files.make_dir(path)
    return path


class Collected:
    """Every event a watch delivered, gathered by polling `get_new_events`."""

    def __init__(self, handle: WatchHandle) -> None:
        self.handle = handle
        self.events: list[FilesystemEvent] = []

    def until(self, *expected: tuple[str, str], timeout: float = 20.0) -> list[FilesystemEvent]:
        """Waits until the events hold `expected` (type, path) pairs in this order; returns them all."""

        def found() -> bool:
            self.events.extend(self.handle.get_new_events())
            remaining = list(expected)
            for event in self.events:
                if remaining and (event.type, event.path) == remaining[0]:
                    remaining.pop(0)
            return not remaining

        eventually_sync(
            found,
            timeout=timeout,
            interval=0.1,
            message=f"expected {expected} in order, got {[(e.type, e.path) for e in self.events]}",
        )
        return self.events


def test_create_modify_rename_and_delete(sandbox: Sandbox, directory: str) -> None:
    with sandbox.files.watch_dir(directory) as handle:
        watch = Collected(handle)
        sandbox.commands.run(
            f"cd {directory} && echo one > a.txt && sleep 0.2 && echo two >> a.txt && sleep 0.2 && "
            "mv a.txt b.txt && sleep 0.2 && mkdir sub && sleep 0.2 && rm b.txt"
        )
        events = watch.until(
            ("create", f"{directory}/a.txt"),
            ("modify", f"{directory}/a.txt"),
            ("rename", f"{directory}/b.txt"),
            ("create", f"{directory}/sub"),
            ("delete", f"{directory}/b.txt"),
        )
    renamed = next(event for event in events if event.type == "rename")
    assert renamed.old_path == f"{directory}/a.txt" and not renamed.is_dir
    created_dir = next(event for event in events if event.path == f"{directory}/sub")
    assert created_dir.is_dir
    assert not handle.running


def test_recursive_watches_see_into_new_subdirectories(sandbox: Sandbox, directory: str) -> None:
    with sandbox.files.watch_dir(directory, recursive=True) as handle:
        watch = Collected(handle)
        # The file is written the instant its directory exists, before any watcher could have
        # reacted to the directory: a recursive watch must still report it.
        sandbox.commands.run(f"mkdir -p {directory}/new/deeper && echo x > {directory}/new/deeper/f.txt")
        watch.until(("create", f"{directory}/new"), ("create", f"{directory}/new/deeper/f.txt"))
        sandbox.commands.run(f"echo more >> {directory}/new/deeper/f.txt && rm -r {directory}/new")
        watch.until(("modify", f"{directory}/new/deeper/f.txt"), ("delete", f"{directory}/new/deeper/f.txt"))


def test_a_plain_watch_stays_at_its_own_level(sandbox: Sandbox, directory: str) -> None:
    sandbox.files.make_dir(f"{directory}/inner")
    with sandbox.files.watch_dir(directory) as handle:
        watch = Collected(handle)
        sandbox.commands.run(f"echo x > {directory}/inner/deep.txt && sleep 0.3 && echo y > {directory}/marker")
        events = watch.until(("create", f"{directory}/marker"))
    assert not [event for event in events if event.path.startswith(f"{directory}/inner/")]


def test_a_handler_receives_events_in_its_own_thread(sandbox: Sandbox, directory: str) -> None:
    received: list[tuple[FilesystemEvent, str]] = []
    handle = sandbox.files.watch_dir(
        directory, on_event=lambda event: received.append((event, threading.current_thread().name))
    )
    try:
        sandbox.commands.run(f"touch {directory}/touched")
        eventually_sync(lambda: any(event.path == f"{directory}/touched" for event, _ in received))
        assert {thread for _, thread in received} == {"hutch-watch-callbacks"}
    finally:
        handle.stop()


def test_watching_a_missing_directory_fails_at_once(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError):
        sandbox.files.watch_dir(f"/tmp/missing-{uuid.uuid4().hex[:8]}")


def test_changes_right_after_watch_dir_returns_are_seen(sandbox: Sandbox, directory: str) -> None:
    for attempt in range(5):
        with sandbox.files.watch_dir(directory) as handle:
            watch = Collected(handle)
            sandbox.commands.run(f"touch {directory}/at-once-{attempt}")
            watch.until(("create", f"{directory}/at-once-{attempt}"), timeout=10)


async def test_the_async_api(connection: dict[str, str]) -> None:
    box = await AsyncSandbox.create(**connection)
    try:
        await box.files.make_dir("/tmp/async-watch")
        async with await box.files.watch_dir("/tmp/async-watch") as handle:
            await box.commands.run("touch /tmp/async-watch/f")
            async with asyncio.timeout(20):
                async for event in handle:
                    if (event.type, event.path) == ("create", "/tmp/async-watch/f"):
                        break
    finally:
        await box.kill()
