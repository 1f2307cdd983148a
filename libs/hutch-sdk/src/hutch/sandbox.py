"""Sandboxes: create, connect to, list and kill them.

`AsyncSandbox` holds the implementation; `Sandbox` runs it from synchronous code (see `_portal`).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

from hutch._config import resolve
from hutch._connection import Connection
from hutch._convert import create_request, sandbox_states
from hutch._hybrid import HybridMethod
from hutch._portal import PORTAL
from hutch.commands import AsyncCommands, Commands
from hutch.exceptions import HutchError, NotFoundError, SandboxError
from hutch.files import AsyncFiles, Files
from hutch.models import SandboxInfo, SandboxState
from hutch.v1 import sandbox_pb2

__all__ = ["AsyncSandbox", "Sandbox"]


async def _get(connection: Connection, sandbox: str) -> SandboxInfo:
    message = await connection.unary(
        f"get sandbox {sandbox}",
        connection.sandboxes.Get,
        sandbox_pb2.GetSandboxRequest(sandbox=sandbox),
    )
    return SandboxInfo.from_proto(message)


async def _kill(connection: Connection, sandbox: str) -> SandboxInfo:
    try:
        message = await connection.unary(
            f"kill sandbox {sandbox}",
            connection.sandboxes.Kill,
            sandbox_pb2.KillSandboxRequest(sandbox=sandbox),
        )
    finally:
        # A killed sandbox needs no channel; asking it something later opens a new one.
        await connection.close()
    return SandboxInfo.from_proto(message)


async def _get_info_by_id(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Describes a sandbox by id or name: `await AsyncSandbox.get_info("sb-...")`.

    Args:
        sandbox_id: The sandbox's id or name.
        api_key: Overrides HUTCH_API_KEY and the config file.
        endpoint: Overrides HUTCH_ENDPOINT and the config file.
        request_timeout: Seconds to wait for the call; None waits as long as the gateway takes.

    Raises:
        NotFoundError: This API key has no such sandbox.
        HutchError: Another failure; the subclass says which.
    """
    async with Connection(resolve(api_key, endpoint, request_timeout)) as connection:
        return await _get(connection, sandbox_id)


async def _kill_by_id(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Kills a sandbox by id or name: `await AsyncSandbox.kill("sb-...")`.

    Args:
        sandbox_id: The sandbox's id or name.
        api_key: Overrides HUTCH_API_KEY and the config file.
        endpoint: Overrides HUTCH_ENDPOINT and the config file.
        request_timeout: Seconds to wait for the kill; None waits as long as the gateway takes.

    Returns:
        The killed sandbox's final description.

    Raises:
        NotFoundError: This API key has no such sandbox.
        SandboxError: The sandbox was already killed.
        HutchError: Another failure; the subclass says which.
    """
    return await _kill(Connection(resolve(api_key, endpoint, request_timeout)), sandbox_id)


class AsyncSandbox:
    """A sandbox: a computer of its own, driven with async/await.

    Make one with `await AsyncSandbox.create()` or `await AsyncSandbox.connect(id)`. Used as an
    async context manager, it is killed when the block ends:

        async with await AsyncSandbox.create() as sandbox:
            result = await sandbox.commands.run("echo hello")

    Attributes:
        commands: Runs commands in the sandbox.
        files: Reads and writes the sandbox's files.
    """

    def __init__(self, info: SandboxInfo, connection: Connection) -> None:
        self._info = info
        self._connection = connection
        self.commands = AsyncCommands(connection, info.id)
        self.files = AsyncFiles(connection, info.id)

    @property
    def id(self) -> str:
        """The sandbox's id, "sb-..."."""
        return self._info.id

    @property
    def name(self) -> str | None:
        """The sandbox's name, or None if it was created without one."""
        return self._info.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, name={self.name!r}, template={self._info.template!r})"

    @classmethod
    async def create(
        cls,
        template: str = "base",
        cpu: float = 1,
        memory_mb: int = 512,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        isolation: str = "auto",
        trust: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Creates a sandbox and returns once it runs.

        Args:
            template: The template to start from.
            cpu: vCPUs, e.g. 0.5 or 2.
            memory_mb: Memory in MiB.
            name: A name unique among this key's live sandboxes: lowercase letters, digits and '-',
                1 to 63 characters. `connect` and the CLI accept it in place of the id.
            metadata: Key/value pairs to find the sandbox by later (`list(metadata=...)`).
            envs: Environment variables every process in the sandbox starts with.
            timeout: The sandbox's lifetime in seconds; None lives until killed.
            isolation: "container" (fast, for trusted code), "gvisor" (a user-space kernel between
                the code and the host, for untrusted code) or "auto": chosen from `trust`.
            trust: "trusted" or "untrusted"; None means the tenant's default. With "auto",
                untrusted code runs under gVisor.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for this and each later call on the sandbox (not for
                commands or file transfers, which have their own limits); None waits as long as the
                gateway takes.

        Returns:
            The running sandbox.

        Raises:
            AuthenticationError: No API key is configured, or the gateway rejects it.
            NotFoundError: The template does not exist.
            InvalidArgumentError: An argument is out of range, e.g. a malformed name.
            AlreadyExistsError: The name is taken.
            ResourceExhaustedError: No capacity, or a quota is reached.
            SandboxError: The sandbox failed to start; the message says why.
            HutchError: Another failure; the subclass says which.
        """
        request = create_request(
            template=template,
            cpu=cpu,
            memory=memory_mb,
            name=name,
            metadata=metadata,
            envs=envs,
            timeout=timeout,
            isolation=isolation,
            trust=trust,
        )
        connection = Connection(resolve(api_key, endpoint, request_timeout))
        try:
            message = await connection.unary(
                f"create a sandbox from template {template!r}", connection.sandboxes.Create, request
            )
        except BaseException:
            await connection.close()
            raise
        return cls(SandboxInfo.from_proto(message), connection)

    @classmethod
    async def connect(
        cls,
        sandbox: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Connects to an existing sandbox.

        Args:
            sandbox: The sandbox's id or name.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for each call on the sandbox; None waits as long as the
                gateway takes.

        Returns:
            A handle on the sandbox; later calls address it by id, even if it was found by name.

        Raises:
            NotFoundError: This API key has no such sandbox.
            HutchError: Another failure; the subclass says which.
        """
        connection = Connection(resolve(api_key, endpoint, request_timeout))
        try:
            info = await _get(connection, sandbox)
        except BaseException:
            await connection.close()
            raise
        return cls(info, connection)

    @staticmethod
    async def list(
        metadata: Mapping[str, str] | None = None,
        states: Iterable[SandboxState | str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Lists this API key's sandboxes, following every page.

        Args:
            metadata: Only sandboxes whose metadata holds all of these pairs.
            states: Only sandboxes in these states, e.g. ["running"]; when None, all but killed and
                failed ones.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for each page; None waits as long as the gateway takes.

        Returns:
            The sandboxes, in the gateway's order.

        Raises:
            InvalidArgumentError: A state name is unknown.
            HutchError: Another failure; the subclass says which.
        """
        request = sandbox_pb2.ListSandboxesRequest(
            metadata=dict(metadata or {}),
            states=[state.to_proto() for state in sandbox_states(states)],
        )
        found: builtins.list[SandboxInfo] = []
        async with Connection(resolve(api_key, endpoint, request_timeout)) as connection:
            while True:
                response = await connection.unary("list sandboxes", connection.sandboxes.List, request)
                found.extend(SandboxInfo.from_proto(message) for message in response.sandboxes)
                if not response.next_page_token:
                    return found
                request.page_token = response.next_page_token

    async def _get_info(self) -> SandboxInfo:
        """Describes the sandbox as it is now.

        Call it on the class with an id or name, `await AsyncSandbox.get_info("sb-...")`, to
        describe a sandbox without connecting to it.

        Raises:
            NotFoundError: The sandbox no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        return await _get(self._connection, self.id)

    get_info = HybridMethod(_get_info, _get_info_by_id)

    async def is_running(self) -> bool:
        """Returns whether the sandbox is running now.

        Raises:
            HutchError: The gateway could not be asked; the subclass says why.
        """
        return (await self.get_info()).state is SandboxState.RUNNING

    async def _kill(self) -> SandboxInfo:
        """Kills the sandbox and returns once it has stopped; its channel is closed.

        Call it on the class with an id or name, `await AsyncSandbox.kill("sb-...")`, to kill a
        sandbox without connecting to it.

        Returns:
            The sandbox's final description.

        Raises:
            SandboxError: The sandbox was already killed.
            NotFoundError: The sandbox no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        return await _kill(self._connection, self.id)

    kill = HybridMethod(_kill, _kill_by_id)

    async def close(self) -> None:
        """Closes the channel to the gateway without killing the sandbox.

        A later call on this object opens a new channel.
        """
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.kill()
        except (NotFoundError, SandboxError):
            # Already killed or gone, which is what leaving the block asks for.
            pass
        except HutchError as error:
            if exc is None:
                raise
            # The block's own exception matters more; the failed kill must not hide it.
            exc.add_note(f"also failed to kill sandbox {self.id}: {error}")


def _get_info_by_id_sync(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Describes a sandbox by id or name: `Sandbox.get_info("sb-...")`.

    Args:
        sandbox_id: The sandbox's id or name.
        api_key: Overrides HUTCH_API_KEY and the config file.
        endpoint: Overrides HUTCH_ENDPOINT and the config file.
        request_timeout: Seconds to wait for the call; None waits as long as the gateway takes.

    Raises:
        NotFoundError: This API key has no such sandbox.
        HutchError: Another failure; the subclass says which.
    """
    return PORTAL.run(_get_info_by_id(sandbox_id, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))


def _kill_by_id_sync(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Kills a sandbox by id or name: `Sandbox.kill("sb-...")`.

    Args:
        sandbox_id: The sandbox's id or name.
        api_key: Overrides HUTCH_API_KEY and the config file.
        endpoint: Overrides HUTCH_ENDPOINT and the config file.
        request_timeout: Seconds to wait for the kill; None waits as long as the gateway takes.

    Returns:
        The killed sandbox's final description.

    Raises:
        NotFoundError: This API key has no such sandbox.
        SandboxError: The sandbox was already killed.
        HutchError: Another failure; the subclass says which.
    """
    return PORTAL.run(_kill_by_id(sandbox_id, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))


class Sandbox:
    """A sandbox: a computer of its own.

    Make one with `Sandbox.create()` or `Sandbox.connect(id)`. Used as a context manager, it is
    killed when the block ends:

        with Sandbox.create() as sandbox:
            print(sandbox.commands.run("echo hello").stdout)

    Calls block the calling thread; they run on a shared background event loop, so they work from
    any thread, including one that runs its own event loop.

    Attributes:
        commands: Runs commands in the sandbox.
        files: Reads and writes the sandbox's files.
    """

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._async = sandbox
        self.commands = Commands(sandbox.commands)
        self.files = Files(sandbox.files)

    @property
    def id(self) -> str:
        """The sandbox's id, "sb-..."."""
        return self._async.id

    @property
    def name(self) -> str | None:
        """The sandbox's name, or None if it was created without one."""
        return self._async.name

    def __repr__(self) -> str:
        return repr(self._async).replace(type(self._async).__name__, type(self).__name__, 1)

    @classmethod
    def create(
        cls,
        template: str = "base",
        cpu: float = 1,
        memory_mb: int = 512,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        isolation: str = "auto",
        trust: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Creates a sandbox and returns once it runs.

        Args:
            template: The template to start from.
            cpu: vCPUs, e.g. 0.5 or 2.
            memory_mb: Memory in MiB.
            name: A name unique among this key's live sandboxes: lowercase letters, digits and '-',
                1 to 63 characters. `connect` and the CLI accept it in place of the id.
            metadata: Key/value pairs to find the sandbox by later (`list(metadata=...)`).
            envs: Environment variables every process in the sandbox starts with.
            timeout: The sandbox's lifetime in seconds; None lives until killed.
            isolation: "container" (fast, for trusted code), "gvisor" (a user-space kernel between
                the code and the host, for untrusted code) or "auto": chosen from `trust`.
            trust: "trusted" or "untrusted"; None means the tenant's default. With "auto",
                untrusted code runs under gVisor.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for this and each later call on the sandbox (not for
                commands or file transfers, which have their own limits); None waits as long as the
                gateway takes.

        Returns:
            The running sandbox.

        Raises:
            AuthenticationError: No API key is configured, or the gateway rejects it.
            NotFoundError: The template does not exist.
            InvalidArgumentError: An argument is out of range, e.g. a malformed name.
            AlreadyExistsError: The name is taken.
            ResourceExhaustedError: No capacity, or a quota is reached.
            SandboxError: The sandbox failed to start; the message says why.
            HutchError: Another failure; the subclass says which.
        """
        return cls(
            PORTAL.run(
                AsyncSandbox.create(
                    template,
                    cpu,
                    memory_mb,
                    name,
                    metadata,
                    envs,
                    timeout,
                    isolation=isolation,
                    trust=trust,
                    api_key=api_key,
                    endpoint=endpoint,
                    request_timeout=request_timeout,
                )
            )
        )

    @classmethod
    def connect(
        cls,
        sandbox: str,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Connects to an existing sandbox.

        Args:
            sandbox: The sandbox's id or name.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for each call on the sandbox; None waits as long as the
                gateway takes.

        Returns:
            A handle on the sandbox; later calls address it by id, even if it was found by name.

        Raises:
            NotFoundError: This API key has no such sandbox.
            HutchError: Another failure; the subclass says which.
        """
        return cls(
            PORTAL.run(
                AsyncSandbox.connect(sandbox, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout)
            )
        )

    @staticmethod
    def list(
        metadata: Mapping[str, str] | None = None,
        states: Iterable[SandboxState | str] | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Lists this API key's sandboxes, following every page.

        Args:
            metadata: Only sandboxes whose metadata holds all of these pairs.
            states: Only sandboxes in these states, e.g. ["running"]; when None, all but killed and
                failed ones.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for each page; None waits as long as the gateway takes.

        Returns:
            The sandboxes, in the gateway's order.

        Raises:
            InvalidArgumentError: A state name is unknown.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(
            AsyncSandbox.list(metadata, states, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout)
        )

    def _get_info(self) -> SandboxInfo:
        """Describes the sandbox as it is now.

        Call it on the class with an id or name, `Sandbox.get_info("sb-...")`, to describe a
        sandbox without connecting to it.

        Raises:
            NotFoundError: The sandbox no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.get_info())

    get_info = HybridMethod(_get_info, _get_info_by_id_sync)

    def is_running(self) -> bool:
        """Returns whether the sandbox is running now.

        Raises:
            HutchError: The gateway could not be asked; the subclass says why.
        """
        return PORTAL.run(self._async.is_running())

    def _kill(self) -> SandboxInfo:
        """Kills the sandbox and returns once it has stopped; its channel is closed.

        Call it on the class with an id or name, `Sandbox.kill("sb-...")`, to kill a sandbox
        without connecting to it.

        Returns:
            The sandbox's final description.

        Raises:
            SandboxError: The sandbox was already killed.
            NotFoundError: The sandbox no longer exists.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.kill())

    kill = HybridMethod(_kill, _kill_by_id_sync)

    def close(self) -> None:
        """Closes the channel to the gateway without killing the sandbox.

        A later call on this object opens a new channel.
        """
        PORTAL.run(self._async.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        PORTAL.run(self._async.__aexit__(exc_type, exc, traceback))
