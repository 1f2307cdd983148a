"""A sandbox's filesystem: `sandbox.files`.

Paths are resolved inside the sandbox: relative paths start at /root, and neither ".." nor symbolic
links can lead outside it.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final, Literal, overload

from hutch._callbacks import CallbackThread
from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch._sources import ByteSource
from hutch._transfer import ProgressHandler, download_file, open_read, write_file
from hutch.exceptions import InvalidArgumentError, NotFoundError
from hutch.models import EntryInfo
from hutch.v1 import files_pb2
from hutch.watch import AsyncWatchHandle, EventHandler, WatchHandle, start_watch

__all__ = ["AsyncFiles", "Files", "ProgressHandler", "ReadFormat"]

ReadFormat = Literal["text", "bytes", "stream"]
_FORMATS: Final = ("text", "bytes", "stream")


class AsyncFiles:
    """Reads and changes one sandbox's filesystem; reached as `sandbox.files` on an `AsyncSandbox`."""

    def __init__(self, connection: Connection, sandbox_id: str) -> None:
        self._connection = connection
        self._sandbox_id = sandbox_id

    def _doing(self, what: str) -> str:
        return f"{what} in sandbox {self._sandbox_id}"

    @overload
    async def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    @overload
    async def read(self, path: str, format: Literal["stream"]) -> AsyncIterator[bytes]: ...
    async def read(self, path: str, format: ReadFormat = "text") -> str | bytes | AsyncIterator[bytes]:
        """Reads a file, checking its SHA-256 against the one the sandbox computed.

        Args:
            path: The file's path.
            format: "text" returns a str (UTF-8, invalid bytes replaced); "bytes" returns bytes;
                "stream" returns an async iterator of byte chunks, for files too large to hold in
                memory; the file is opened (and errors raised) before it returns, and the checksum
                is checked when the data ends.

        Returns:
            The content, in the requested format.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            ChecksumMismatchError: The data arrived corrupted (with "stream": raised by the iterator
                at the end of the data).
            HutchError: Another failure; the subclass says which.
        """
        if format not in _FORMATS:
            raise InvalidArgumentError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")
        _, chunks = await open_read(self._connection, self._sandbox_id, path, self._doing(f"read {path}"))
        if format == "stream":
            return chunks
        try:
            content = b"".join([chunk async for chunk in chunks])
        finally:
            await chunks.aclose()
        return content.decode("utf-8", errors="replace") if format == "text" else content

    async def write(
        self,
        path: str,
        data: ByteSource,
        *,
        mode: int | None = None,
        user: str | None = None,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Writes a file, replacing it atomically once all data has arrived.

        A failed upload leaves no partial file behind. The SHA-256 of what the sandbox received is
        checked against what was sent.

        Args:
            path: The file's path.
            data: The content: str (written as UTF-8), bytes, or a file object read to its end.
            mode: Permission bits for a new file, e.g. 0o600; 0o644 when None. An existing file
                keeps its mode.
            user: Owner of a new file; root when None.
            on_progress: Called with the number of bytes sent so far, after each chunk; may be a
                coroutine function.

        Returns:
            The written file's info.

        Raises:
            ResourceExhaustedError: The file is larger than the sandbox allows.
            ChecksumMismatchError: The sandbox received other bytes than were sent; write it again.
            HutchError: Another failure; the subclass says which.
        """
        header = files_pb2.WriteFileHeader(sandbox=self._sandbox_id, path=path, mode=mode or 0, user=user or "")
        info = await write_file(
            self._connection, header, data, on_progress=on_progress, doing=self._doing(f"write {path}")
        )
        return EntryInfo.from_proto(info)

    async def upload(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        mode: int | None = None,
        user: str | None = None,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Copies a local file into the sandbox, streaming it: a file of any size needs little memory.

        Like `write`, the file appears complete or not at all, and its checksum is verified.

        Args:
            local_path: The file to send.
            remote_path: Where it goes in the sandbox.
            mode: Permission bits for a new file; 0o644 when None.
            user: Owner of a new file; root when None.
            on_progress: Called with the number of bytes sent so far; may be a coroutine function.

        Returns:
            The written file's info.

        Raises:
            OSError: The local file cannot be read.
            ChecksumMismatchError: The sandbox received other bytes than were sent; upload it again.
            HutchError: Another failure; the subclass says which.
        """
        with Path(local_path).open("rb") as source:
            return await self.write(remote_path, source, mode=mode, user=user, on_progress=on_progress)

    async def download(
        self,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Copies a file out of the sandbox, streaming it to disk: a file of any size needs little memory.

        The data goes to a hidden temporary file next to `local_path`, which replaces `local_path`
        only once the whole file arrived and its checksum matched; on any failure it is removed and
        `local_path` is left as it was.

        Args:
            remote_path: The file in the sandbox.
            local_path: Where to write it (a file path, not a directory).
            on_progress: Called with the number of bytes received so far; may be a coroutine function.

        Returns:
            The remote file's info.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            ChecksumMismatchError: The data arrived corrupted; download it again.
            OSError: The local file cannot be written.
            HutchError: Another failure; the subclass says which.
        """
        info = await download_file(
            self._connection,
            self._sandbox_id,
            remote_path,
            Path(local_path),
            on_progress=on_progress,
            doing=self._doing(f"download {remote_path}"),
        )
        return EntryInfo.from_proto(info)

    async def watch_dir(
        self, path: str, recursive: bool = False, on_event: EventHandler | None = None
    ) -> AsyncWatchHandle:
        """Watches a directory for changes and returns once the watch is in place.

        Every change made after this returns is reported: files and directories created, modified,
        deleted or renamed.

        Args:
            path: The directory.
            recursive: Also watch every directory below it, including ones created later.
            on_event: Called with each `FilesystemEvent`; may be a coroutine function. Without it,
                iterate the handle.

        Returns:
            A handle on the watch; `stop()` ends it.

        Raises:
            NotFoundError: The directory does not exist.
            HutchError: Another failure; the subclass says which.
        """
        return await start_watch(self._connection, self._sandbox_id, path, recursive, on_event)

    async def list(self, path: str, depth: int = 1) -> builtins.list[EntryInfo]:
        """Lists a directory.

        Args:
            path: The directory's path.
            depth: How deep to descend; 1 lists only the directory's own entries.

        Returns:
            The entries, each with its absolute path.

        Raises:
            NotFoundError: The directory does not exist.
            HutchError: Another failure; the subclass says which.
        """
        if depth < 1:
            raise InvalidArgumentError(f"depth must be at least 1, not {depth}")
        response = await self._connection.unary(
            self._doing(f"list {path}"),
            self._connection.files.List,
            files_pb2.ListDirRequest(sandbox=self._sandbox_id, path=path, depth=depth),
        )
        return [EntryInfo.from_proto(entry) for entry in response.entries]

    async def get_info(self, path: str) -> EntryInfo:
        """Describes a file, directory or symbolic link.

        Raises:
            NotFoundError: Nothing exists at the path.
            HutchError: Another failure; the subclass says which.
        """
        info = await self._connection.unary(
            self._doing(f"stat {path}"),
            self._connection.files.Stat,
            files_pb2.StatRequest(sandbox=self._sandbox_id, path=path),
        )
        return EntryInfo.from_proto(info)

    async def exists(self, path: str) -> bool:
        """Returns whether anything exists at the path.

        Raises:
            HutchError: The check itself failed, e.g. the sandbox does not exist.
        """
        try:
            await self.get_info(path)
        except NotFoundError:
            return False
        return True

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, a link or an empty directory; with `recursive`, a directory and its contents.

        Raises:
            NotFoundError: Nothing exists at the path.
            HutchError: Another failure, e.g. a non-empty directory without `recursive`.
        """
        await self._connection.unary(
            self._doing(f"remove {path}"),
            self._connection.files.Remove,
            files_pb2.RemoveRequest(sandbox=self._sandbox_id, path=path, recursive=recursive),
        )

    async def make_dir(self, path: str) -> bool:
        """Creates a directory.

        Returns:
            True if it was created, False if it already existed.

        Raises:
            HutchError: The directory could not be created; the subclass says why.
        """
        response = await self._connection.unary(
            self._doing(f"make directory {path}"),
            self._connection.files.MakeDir,
            files_pb2.MakeDirRequest(sandbox=self._sandbox_id, path=path),
        )
        return response.created

    async def rename(self, old_path: str, new_path: str) -> EntryInfo:
        """Moves a file or directory.

        Returns:
            The entry at its new path.

        Raises:
            NotFoundError: `old_path` does not exist.
            HutchError: Another failure; the subclass says which.
        """
        info = await self._connection.unary(
            self._doing(f"rename {old_path} to {new_path}"),
            self._connection.files.Rename,
            files_pb2.RenameRequest(sandbox=self._sandbox_id, source=old_path, destination=new_path),
        )
        return EntryInfo.from_proto(info)


class Files:
    """Reads and changes one sandbox's filesystem; reached as `sandbox.files` on a `Sandbox`."""

    def __init__(self, files: AsyncFiles) -> None:
        self._async = files

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    @overload
    def read(self, path: str, format: Literal["stream"]) -> Iterator[bytes]: ...
    def read(self, path: str, format: ReadFormat = "text") -> str | bytes | Iterator[bytes]:
        """Reads a file, checking its SHA-256 against the one the sandbox computed.

        Args:
            path: The file's path.
            format: "text" returns a str (UTF-8, invalid bytes replaced); "bytes" returns bytes;
                "stream" returns an iterator of byte chunks, for files too large to hold in memory;
                the file is opened (and errors raised) before it returns, and the checksum is
                checked when the data ends. Close the iterator (or exhaust it) to end the transfer.

        Returns:
            The content, in the requested format.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            ChecksumMismatchError: The data arrived corrupted (with "stream": raised by the iterator
                at the end of the data).
            HutchError: Another failure; the subclass says which.
        """
        if format == "stream":
            return PORTAL.iterate(PORTAL.run(self._async.read(path, "stream")))
        if format == "bytes":
            return PORTAL.run(self._async.read(path, "bytes"))
        if format == "text":
            return PORTAL.run(self._async.read(path, "text"))
        raise InvalidArgumentError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")

    def write(
        self,
        path: str,
        data: ByteSource,
        *,
        mode: int | None = None,
        user: str | None = None,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Writes a file, replacing it atomically once all data has arrived.

        A failed upload leaves no partial file behind. The SHA-256 of what the sandbox received is
        checked against what was sent.

        Args:
            path: The file's path.
            data: The content: str (written as UTF-8), bytes, or a file object read to its end.
            mode: Permission bits for a new file, e.g. 0o600; 0o644 when None. An existing file
                keeps its mode.
            user: Owner of a new file; root when None.
            on_progress: Called in the calling thread with the number of bytes sent so far.

        Returns:
            The written file's info.

        Raises:
            ResourceExhaustedError: The file is larger than the sandbox allows.
            ChecksumMismatchError: The sandbox received other bytes than were sent; write it again.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run_relaying(
            lambda relay: self._async.write(
                path, data, mode=mode, user=user, on_progress=None if on_progress is None else relay(on_progress)
            )
        )

    def upload(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        mode: int | None = None,
        user: str | None = None,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Copies a local file into the sandbox, streaming it: a file of any size needs little memory.

        Like `write`, the file appears complete or not at all, and its checksum is verified.

        Args:
            local_path: The file to send.
            remote_path: Where it goes in the sandbox.
            mode: Permission bits for a new file; 0o644 when None.
            user: Owner of a new file; root when None.
            on_progress: Called in the calling thread with the number of bytes sent so far.

        Returns:
            The written file's info.

        Raises:
            OSError: The local file cannot be read.
            ChecksumMismatchError: The sandbox received other bytes than were sent; upload it again.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run_relaying(
            lambda relay: self._async.upload(
                local_path,
                remote_path,
                mode=mode,
                user=user,
                on_progress=None if on_progress is None else relay(on_progress),
            )
        )

    def download(
        self,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        on_progress: ProgressHandler | None = None,
    ) -> EntryInfo:
        """Copies a file out of the sandbox, streaming it to disk: a file of any size needs little memory.

        The data goes to a hidden temporary file next to `local_path`, which replaces `local_path`
        only once the whole file arrived and its checksum matched; on any failure it is removed and
        `local_path` is left as it was.

        Args:
            remote_path: The file in the sandbox.
            local_path: Where to write it (a file path, not a directory).
            on_progress: Called in the calling thread with the number of bytes received so far.

        Returns:
            The remote file's info.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            ChecksumMismatchError: The data arrived corrupted; download it again.
            OSError: The local file cannot be written.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run_relaying(
            lambda relay: self._async.download(
                remote_path, local_path, on_progress=None if on_progress is None else relay(on_progress)
            )
        )

    def watch_dir(self, path: str, recursive: bool = False, on_event: EventHandler | None = None) -> WatchHandle:
        """Watches a directory for changes and returns once the watch is in place.

        Every change made after this returns is reported: files and directories created, modified,
        deleted or renamed.

        Args:
            path: The directory.
            recursive: Also watch every directory below it, including ones created later.
            on_event: Called with each `FilesystemEvent`, in a thread of the handle's own. Without it,
                iterate the handle or call `get_new_events()`.

        Returns:
            A handle on the watch; `stop()` ends it (or use it as a context manager).

        Raises:
            NotFoundError: The directory does not exist.
            HutchError: Another failure; the subclass says which.
        """
        callbacks = CallbackThread("hutch-watch-callbacks")
        relayed = None if on_event is None else callbacks.relay(on_event)
        return WatchHandle(PORTAL.run(self._async.watch_dir(path, recursive, relayed)), callbacks)

    def list(self, path: str, depth: int = 1) -> builtins.list[EntryInfo]:
        """Lists a directory.

        Args:
            path: The directory's path.
            depth: How deep to descend; 1 lists only the directory's own entries.

        Returns:
            The entries, each with its absolute path.

        Raises:
            NotFoundError: The directory does not exist.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.list(path, depth))

    def get_info(self, path: str) -> EntryInfo:
        """Describes a file, directory or symbolic link.

        Raises:
            NotFoundError: Nothing exists at the path.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.get_info(path))

    def exists(self, path: str) -> bool:
        """Returns whether anything exists at the path.

        Raises:
            HutchError: The check itself failed, e.g. the sandbox does not exist.
        """
        return PORTAL.run(self._async.exists(path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, a link or an empty directory; with `recursive`, a directory and its contents.

        Raises:
            NotFoundError: Nothing exists at the path.
            HutchError: Another failure, e.g. a non-empty directory without `recursive`.
        """
        PORTAL.run(self._async.remove(path, recursive=recursive))

    def make_dir(self, path: str) -> bool:
        """Creates a directory.

        Returns:
            True if it was created, False if it already existed.

        Raises:
            HutchError: The directory could not be created; the subclass says why.
        """
        return PORTAL.run(self._async.make_dir(path))

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        """Moves a file or directory.

        Returns:
            The entry at its new path.

        Raises:
            NotFoundError: `old_path` does not exist.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.rename(old_path, new_path))
