"""A sandbox's filesystem: `sandbox.files`.

Paths are resolved inside the sandbox: relative paths start at /root, and neither ".." nor symbolic
links can lead outside it.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterator
from typing import Final, Literal, overload

import grpc.aio

from hutch._connection import Connection
from hutch._portal import PORTAL
from hutch._sources import ByteSource, iter_chunks, known_size
from hutch.exceptions import InternalError, InvalidArgumentError, NotFoundError
from hutch.models import EntryInfo
from hutch.v1 import files_pb2

__all__ = ["AsyncFiles", "Files", "ReadFormat"]

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
        """Reads a file.

        Args:
            path: The file's path.
            format: "text" returns a str (UTF-8, invalid bytes replaced); "bytes" returns bytes;
                "stream" returns an async iterator of byte chunks, for files too large to hold in
                memory; the file is opened (and errors raised) before it returns.

        Returns:
            The content, in the requested format.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            HutchError: Another failure; the subclass says which.
        """
        if format not in _FORMATS:
            raise InvalidArgumentError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")
        doing = self._doing(f"read {path}")
        call = self._connection.files.Read(
            files_pb2.ReadFileRequest(sandbox=self._sandbox_id, path=path), metadata=self._connection.metadata
        )
        try:
            with self._connection.translated(doing):
                first = await call.read()
            if not isinstance(first, files_pb2.ReadFileResponse) or first.WhichOneof("event") != "info":
                raise InternalError(f"{doing}: the gateway sent data before the file's info")
            chunks = self._data(call, doing)
            if format == "stream":
                return chunks
            content = b"".join([chunk async for chunk in chunks])
        except BaseException:
            call.cancel()
            raise
        return content.decode("utf-8", errors="replace") if format == "text" else content

    async def _data(
        self,
        call: grpc.aio.UnaryStreamCall[files_pb2.ReadFileRequest, files_pb2.ReadFileResponse],
        doing: str,
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                with self._connection.translated(doing):
                    response = await call.read()
                if not isinstance(response, files_pb2.ReadFileResponse):
                    return
                if response.WhichOneof("event") == "data":
                    yield response.data
        finally:
            # Stops the transfer when the caller leaves the stream early.
            call.cancel()

    async def write(
        self,
        path: str,
        data: ByteSource,
        *,
        mode: int | None = None,
        user: str | None = None,
    ) -> EntryInfo:
        """Writes a file, replacing it atomically once all data has arrived.

        A failed upload leaves no partial file behind.

        Args:
            path: The file's path.
            data: The content: str (written as UTF-8), bytes, or a file object read to its end.
            mode: Permission bits for a new file, e.g. 0o600; 0o644 when None. An existing file
                keeps its mode.
            user: Owner of a new file; root when None.

        Returns:
            The written file's info.

        Raises:
            ResourceExhaustedError: The file is larger than the sandbox allows.
            HutchError: Another failure; the subclass says which.
        """
        doing = self._doing(f"write {path}")
        header = files_pb2.WriteFileHeader(
            sandbox=self._sandbox_id, path=path, mode=mode or 0, user=user or "", size=known_size(data) or 0
        )
        call = self._connection.files.Write(None, metadata=self._connection.metadata)
        try:
            with self._connection.translated(doing):
                try:
                    await call.write(files_pb2.WriteFileRequest(header=header))
                    async for chunk in iter_chunks(data):
                        await call.write(files_pb2.WriteFileRequest(data=chunk))
                    # Only `end` commits the file: a stream cut short anywhere on its way writes nothing.
                    await call.write(files_pb2.WriteFileRequest(end=files_pb2.WriteFileEnd()))
                    await call.done_writing()
                except asyncio.InvalidStateError:
                    # The gateway ended the call early (e.g. the file is too large); awaiting the
                    # call below raises the status it ended with.
                    pass
                info = await call
        except BaseException:
            call.cancel()
            raise
        return EntryInfo.from_proto(info)

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
        """Reads a file.

        Args:
            path: The file's path.
            format: "text" returns a str (UTF-8, invalid bytes replaced); "bytes" returns bytes;
                "stream" returns an iterator of byte chunks, for files too large to hold in memory;
                the file is opened (and errors raised) before it returns. Close the iterator (or
                exhaust it) to end the transfer.

        Returns:
            The content, in the requested format.

        Raises:
            NotFoundError: The file or the sandbox does not exist.
            HutchError: Another failure; the subclass says which.
        """
        if format == "stream":
            return PORTAL.iterate(PORTAL.run(self._async.read(path, "stream")))
        if format == "bytes":
            return PORTAL.run(self._async.read(path, "bytes"))
        if format == "text":
            return PORTAL.run(self._async.read(path, "text"))
        raise InvalidArgumentError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")

    def write(self, path: str, data: ByteSource, *, mode: int | None = None, user: str | None = None) -> EntryInfo:
        """Writes a file, replacing it atomically once all data has arrived.

        A failed upload leaves no partial file behind.

        Args:
            path: The file's path.
            data: The content: str (written as UTF-8), bytes, or a file object read to its end.
            mode: Permission bits for a new file, e.g. 0o600; 0o644 when None. An existing file
                keeps its mode.
            user: Owner of a new file; root when None.

        Returns:
            The written file's info.

        Raises:
            ResourceExhaustedError: The file is larger than the sandbox allows.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.write(path, data, mode=mode, user=user))

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
