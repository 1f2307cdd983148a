"""Sandboxes: create, connect to, list and kill them.

`AsyncSandbox` holds the implementation; `Sandbox` runs it from synchronous code (see `_portal`).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

from hutch._config import resolve
from hutch._connection import Connection
from hutch._convert import create_request, lifetime_seconds, port_number, sandbox_states
from hutch._hybrid import HybridMethod
from hutch._portal import PORTAL
from hutch.commands import AsyncCommands, Commands
from hutch.exceptions import HutchError, InvalidArgumentError, NotFoundError, SandboxError
from hutch.files import AsyncFiles, Files
from hutch.models import SandboxInfo, SandboxState, SnapshotInfo
from hutch.network import EgressReport, NetworkPolicy, NetworkSpec, merged, policy_message
from hutch.network import egress as _egress
from hutch.network import get_network as _get_network
from hutch.network import update_network as _update_network
from hutch.pty import AsyncPty, Pty
from hutch.snapshot import take_snapshot
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


async def _set_timeout(connection: Connection, sandbox: str, seconds: float | None) -> SandboxInfo:
    message = await connection.unary(
        f"set the timeout of sandbox {sandbox}",
        connection.sandboxes.SetTimeout,
        sandbox_pb2.SetTimeoutRequest(sandbox=sandbox, timeout_seconds=lifetime_seconds(seconds)),
    )
    return SandboxInfo.from_proto(message)


async def _resize(connection: Connection, sandbox: str, cpu: float | None, memory_mb: int | None) -> SandboxInfo:
    if cpu is None and memory_mb is None:
        raise InvalidArgumentError("resize needs a new cpu or memory_mb (or both)")
    if (cpu is not None and not cpu > 0) or (memory_mb is not None and memory_mb <= 0):
        raise InvalidArgumentError("cpu and memory_mb must be positive")
    resources = sandbox_pb2.Resources(cpu_millis=round(cpu * 1000) if cpu is not None else 0, memory_mb=memory_mb or 0)
    message = await connection.unary(
        f"resize sandbox {sandbox}",
        connection.sandboxes.Resize,
        sandbox_pb2.ResizeSandboxRequest(sandbox=sandbox, resources=resources),
    )
    return SandboxInfo.from_proto(message)


async def _preview(connection: Connection, sandbox: str, port: int, expires_in: float) -> sandbox_pb2.PreviewUrl:
    if not isinstance(expires_in, int | float) or not 0 < expires_in < 2**32:
        raise InvalidArgumentError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
    lifetime = math.ceil(expires_in)
    return await connection.unary(
        f"get a preview URL for port {port} of sandbox {sandbox}",
        connection.sandboxes.GetPreviewUrl,
        sandbox_pb2.GetPreviewUrlRequest(sandbox=sandbox, port=port_number(port), expires_in_seconds=lifetime),
    )


def _host_of(preview: sandbox_pb2.PreviewUrl) -> str:
    # The URL's host and port, e.g. "8080-sb-1.localhost:50080": what a client needs to reach the
    # port, where `host` alone lacks the edge's port whenever that is not the scheme's default.
    return urlsplit(preview.url).netloc or preview.host


async def _set_port_visibility(connection: Connection, sandbox: str, port: int, public: bool) -> SandboxInfo:
    message = await connection.unary(
        f"make port {port} of sandbox {sandbox} {'public' if public else 'private'}",
        connection.sandboxes.SetPortVisibility,
        sandbox_pb2.SetPortVisibilityRequest(sandbox=sandbox, port=port_number(port), public=public),
    )
    return SandboxInfo.from_proto(message)


async def _pause(connection: Connection, sandbox: str) -> SandboxInfo:
    message = await connection.unary(
        f"pause sandbox {sandbox}", connection.sandboxes.Pause, sandbox_pb2.PauseSandboxRequest(sandbox=sandbox)
    )
    return SandboxInfo.from_proto(message)


async def _resume(connection: Connection, sandbox: str) -> SandboxInfo:
    message = await connection.unary(
        f"resume sandbox {sandbox}", connection.sandboxes.Resume, sandbox_pb2.ResumeSandboxRequest(sandbox=sandbox)
    )
    return SandboxInfo.from_proto(message)


async def _fork(
    connection: Connection, sandbox: str, count: int, metadata: Mapping[str, str] | None
) -> builtins.list[SandboxInfo]:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < 2**32:
        raise InvalidArgumentError(f"count must be a whole number from 1 to 100, not {count!r}")
    response = await connection.unary(
        f"fork sandbox {sandbox}",
        connection.sandboxes.Fork,
        sandbox_pb2.ForkSandboxRequest(sandbox=sandbox, count=count, metadata=dict(metadata or {})),
    )
    return [SandboxInfo.from_proto(message) for message in response.sandboxes]


async def _pause_by_id(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Pauses a sandbox by id or name: `await AsyncSandbox.pause("sb-...")`. See `pause`."""
    async with Connection(resolve(api_key, endpoint, request_timeout)) as connection:
        return await _pause(connection, sandbox_id)


async def _resume_by_id(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Resumes a sandbox by id or name: `await AsyncSandbox.resume("sb-...")`. See `resume`."""
    async with Connection(resolve(api_key, endpoint, request_timeout)) as connection:
        return await _resume(connection, sandbox_id)


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
        pty: Starts interactive terminals in the sandbox.
    """

    def __init__(self, info: SandboxInfo, connection: Connection) -> None:
        self._info = info
        self._connection = connection
        self.commands = AsyncCommands(connection, info.id)
        self.files = AsyncFiles(connection, info.id)
        self.pty = AsyncPty(connection, info.id)

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
        template: str | None = None,
        cpu: float | None = None,
        memory_mb: int | Literal["auto"] | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        isolation: str = "auto",
        trust: str | None = None,
        snapshot: str | None = None,
        network: NetworkSpec | None = None,
        auto_sleep_after: float | None = None,
        memory_ceiling_mb: int | None = None,
        region: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Creates a sandbox and returns once it runs.

        Args:
            template: The template to start from; None: "base" (with `snapshot`, the snapshot's).
            cpu: vCPUs, e.g. 0.5 or 2; None: 1 (with `snapshot`, what its sandbox had).
            memory_mb: Memory in MiB; None: 512 (with `snapshot`, what its sandbox had). "auto":
                start with 256 MiB and let the node raise the limit as the sandbox needs, up to
                `memory_ceiling_mb` (4096 when None), instead of OOM-killing its processes.
            name: A name unique among this key's live sandboxes: lowercase letters, digits and '-',
                1 to 63 characters. `connect` and the CLI accept it in place of the id.
            metadata: Key/value pairs to find the sandbox by later (`list(metadata=...)`).
            envs: Environment variables every process in the sandbox starts with.
            timeout: The sandbox's lifetime in seconds; None lives until killed.
            isolation: "container" (fast, for trusted code), "gvisor" (a user-space kernel between
                the code and the host, for untrusted code) or "auto": chosen from `trust`.
            trust: "trusted" or "untrusted"; None means the tenant's default. With "auto",
                untrusted code runs under gVisor.
            snapshot: Start from this snapshot (id or name) instead of the bare template: its files,
                and for a gVisor snapshot its running processes. Its template and isolation class
                are the snapshot's; its environment variables too, unless `envs` overrides them.
            network: What the sandbox may reach, e.g. {"allow": ["api.github.com", "*.pypi.org"]};
                None reaches nothing (see `hutch.network` for the entries and `update_network`).
            auto_sleep_after: Put the sandbox to sleep after this many seconds with no call, no open
                terminal, stream or preview connection and almost no CPU: its memory (gVisor) and
                files are kept and its CPU and memory freed; the next request wakes it. None: never.
            memory_ceiling_mb: With it, memory grows automatically from `memory_mb` up to this.
            region: The region to run it in. None: the region of the gateway you call, or, when
                none of its nodes has room, the nearest region that has. Every region's gateway
                reaches it afterwards (`SandboxInfo.region` says where it runs).
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for this and each later call on the sandbox (not for
                commands or file transfers, which have their own limits); None waits as long as the
                gateway takes.

        Returns:
            The running sandbox.

        Raises:
            AuthenticationError: No API key is configured, or the gateway rejects it.
            NotFoundError: The template or the snapshot does not exist.
            InvalidArgumentError: An argument is out of range, e.g. a malformed name, or contradicts
                the snapshot (another template or isolation class).
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
            snapshot=snapshot,
            auto_sleep_after=auto_sleep_after,
            memory_ceiling=memory_ceiling_mb,
            region=region,
        )
        request.network.CopyFrom(policy_message(network))
        source = f"snapshot {snapshot!r}" if snapshot else f"template {template or 'base'!r}"
        connection = Connection(resolve(api_key, endpoint, request_timeout))
        try:
            message = await connection.unary(f"create a sandbox from {source}", connection.sandboxes.Create, request)
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
            A handle on the sandbox; later calls address it by id, even if it was found by name. A
            paused sandbox is resumed first, so the handle is ready to use.

        Raises:
            NotFoundError: This API key has no such sandbox.
            HutchError: Another failure; the subclass says which.
        """
        connection = Connection(resolve(api_key, endpoint, request_timeout))
        try:
            info = await _get(connection, sandbox)
            if info.state is SandboxState.PAUSED:
                info = await _resume(connection, info.id)
        except BaseException:
            await connection.close()
            raise
        return cls(info, connection)

    @staticmethod
    async def list(
        metadata: Mapping[str, str] | None = None,
        states: Iterable[SandboxState | str] | None = None,
        *,
        all_regions: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Lists this API key's sandboxes, following every page.

        Args:
            metadata: Only sandboxes whose metadata holds all of these pairs.
            states: Only sandboxes in these states, e.g. ["running"]; when None, all but killed and
                failed ones.
            all_regions: Every region's sandboxes, newest first across them (`SandboxInfo.region`
                says where each runs); by default only the region of the gateway you call.
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
            all_regions=all_regions,
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

    async def update_network(
        self,
        network: NetworkSpec | None = None,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
        passthrough: Iterable[str] | None = None,
    ) -> NetworkPolicy:
        """Replaces what the sandbox may reach; new connections follow it within a second.

        Args:
            network: The whole new policy ({"allow": [...], "deny": [...], "passthrough": [...]}).
            allow, deny, passthrough: Or the lists themselves (omitted ones become empty).

        Returns:
            The policy as stored (normalized).

        Raises:
            InvalidArgumentError: An entry is malformed; the message names it.
            SandboxError: The sandbox has ended.
        """
        return await _update_network(self._connection, self.id, merged(network, allow, deny, passthrough))

    async def get_network(self) -> NetworkPolicy:
        """What the sandbox may reach now."""
        return await _get_network(self._connection, self.id)

    async def egress(self) -> EgressReport:
        """Bytes out and in per destination since the sandbox started, and its refusals."""
        return await _egress(self._connection, self.id)

    async def set_timeout(self, timeout: float | None) -> SandboxInfo:
        """Sets how long the sandbox may still live, counted from now.

        Args:
            timeout: Seconds until it is killed (fractions round up); None lets it live until killed.

        Returns:
            The sandbox as it is now, `expires_at` included.

        Raises:
            InvalidArgumentError: timeout is negative or too large.
            SandboxError: The sandbox is no longer running.
            HutchError: Another failure; the subclass says which.
        """
        return await _set_timeout(self._connection, self.id, timeout)

    async def resize(self, cpu: float | None = None, memory_mb: int | None = None) -> SandboxInfo:
        """Changes the sandbox's CPU and memory while it runs, without restarting anything.

        Either class (container or gVisor) is resized in place; its processes keep running. The new
        size is what it is billed for from now on, and pauses and resumes keep it.

        Args:
            cpu: vCPUs it may use from now on, e.g. 0.5 or 2; None keeps the current value.
            memory_mb: Memory it may use from now on, in MiB; None keeps the current value.

        Returns:
            The sandbox as it is now, with its new size.

        Raises:
            InvalidArgumentError: Neither is given, or a value is outside the allowed bounds.
            ResourceExhaustedError: Its node has no room for the growth.
            SandboxError: It is not running, or the new memory is below what it uses now.
            HutchError: Another failure; the subclass says which.
        """
        return await _resize(self._connection, self.id, cpu, memory_mb)

    async def get_preview_url(self, port: int, expires_in: float = 3600) -> str:
        """A URL that reaches a port inside the sandbox from outside, through the preview edge.

        Anything listening on the port in the sandbox (on any address) answers: HTTP, including
        WebSocket upgrades. For a private port (the default) the URL carries a signed token that
        opens this port of this sandbox only, until it expires; a public port needs none (see
        `set_port_public`).

        Args:
            port: The port inside the sandbox, 1 to 65535.
            expires_in: Seconds the URL's token stays valid; at most 30 days.

        Returns:
            The URL, e.g. "http://8080-sb-abc.localhost:50080/?hutch_token=...".

        Raises:
            InvalidArgumentError: The port or expires_in is out of range.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        return (await _preview(self._connection, self.id, port, expires_in)).url

    async def get_host(self, port: int) -> str:
        """The host (and, where it is not the scheme's default, the port) that reaches a sandbox port.

        Args:
            port: The port inside the sandbox, 1 to 65535.

        Returns:
            E.g. "8080-sb-abc.localhost:50080". Requests to it need a token unless the port is
            public: use `get_preview_url` for a URL that carries one.

        Raises:
            InvalidArgumentError: The port is out of range.
            HutchError: Another failure; the subclass says which.
        """
        return _host_of(await _preview(self._connection, self.id, port, 3600))

    async def set_port_public(self, port: int, public: bool = True) -> SandboxInfo:
        """Lets anyone reach a sandbox port through the preview edge without a token, or stops that.

        Args:
            port: The port inside the sandbox, 1 to 65535.
            public: True to open it to everyone, False to require a token again.

        Returns:
            The sandbox as it is now, `public_ports` included.

        Raises:
            InvalidArgumentError: The port is out of range.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        return await _set_port_visibility(self._connection, self.id, port, public)

    async def snapshot(self, name: str | None = None, labels: Mapping[str, str] | None = None) -> SnapshotInfo:
        """Captures the sandbox as it is now, while it keeps running; returns once the snapshot is stored.

        A container sandbox's snapshot holds its filesystem; a gVisor sandbox's also its memory and
        running processes. Start new sandboxes from it with `create(snapshot=...)`.

        Args:
            name: A name unique among your snapshots (lowercase letters, digits and '-').
            labels: Key/value pairs to describe it.

        Raises:
            SandboxError: The sandbox is not running.
            AlreadyExistsError: A snapshot already has that name.
            HutchError: Another failure; the subclass says which.
        """
        return await take_snapshot(self._connection, self.id, name, labels)

    async def _pause(self) -> SandboxInfo:
        """Snapshots the sandbox and frees its CPU and memory; it stays paused until resumed.

        Its files (and under gVisor its running processes) are kept in the snapshot. While paused,
        commands and file calls fail with SandboxError, and its timeout does not run. Pausing a
        paused sandbox changes nothing. Call it on the class with an id or name,
        `await AsyncSandbox.pause("sb-...")`, to pause a sandbox without connecting to it.

        Returns:
            The sandbox, now paused.

        Raises:
            SandboxError: The sandbox is still starting, or is being killed or has ended.
            HutchError: Another failure; the subclass says which.
        """
        return await _pause(self._connection, self.id)

    pause = HybridMethod(_pause, _pause_by_id)

    async def _resume(self) -> SandboxInfo:
        """Starts a paused sandbox again from its snapshot and returns once it runs.

        Resuming a running sandbox changes nothing. Call it on the class with an id or name,
        `await AsyncSandbox.resume("sb-...")`; `connect` resumes a paused sandbox too.

        Returns:
            The sandbox, running.

        Raises:
            ResourceExhaustedError: No node has room for it now; it stays paused.
            SandboxError: It is being killed or has ended.
            HutchError: Another failure; the subclass says which.
        """
        return await _resume(self._connection, self.id)

    resume = HybridMethod(_resume, _resume_by_id)

    async def fork(self, count: int = 1, metadata: Mapping[str, str] | None = None) -> builtins.list[Self]:
        """New sandboxes that start with this one's state; returns once they all run.

        Each child gets a copy of the files (under gVisor also of the memory and running
        processes, which go on in each child on their own), this sandbox's template, isolation
        class, resources, environment and timeout, and its metadata with `metadata` on top. All or
        nothing: if one cannot start, none is kept.

        Args:
            count: How many, 1 to 100.
            metadata: Added to each child's metadata.

        Raises:
            SandboxError: The sandbox is not running.
            ResourceExhaustedError: There is no room for all of them.
            HutchError: Another failure; the subclass says which.
        """
        children = await _fork(self._connection, self.id, count, metadata)
        return [type(self)(info, Connection(self._connection.config)) for info in children]

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


def _pause_by_id_sync(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Pauses a sandbox by id or name: `Sandbox.pause("sb-...")`. See `pause`."""
    return PORTAL.run(_pause_by_id(sandbox_id, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))


def _resume_by_id_sync(
    sandbox_id: str,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """Resumes a sandbox by id or name: `Sandbox.resume("sb-...")`. See `resume`."""
    return PORTAL.run(_resume_by_id(sandbox_id, api_key=api_key, endpoint=endpoint, request_timeout=request_timeout))


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
        pty: Starts interactive terminals in the sandbox.
    """

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._async = sandbox
        self.commands = Commands(sandbox.commands)
        self.files = Files(sandbox.files)
        self.pty = Pty(sandbox.pty)

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
        template: str | None = None,
        cpu: float | None = None,
        memory_mb: int | Literal["auto"] | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        isolation: str = "auto",
        trust: str | None = None,
        snapshot: str | None = None,
        network: NetworkSpec | None = None,
        auto_sleep_after: float | None = None,
        memory_ceiling_mb: int | None = None,
        region: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Creates a sandbox and returns once it runs.

        Args:
            template: The template to start from; None: "base" (with `snapshot`, the snapshot's).
            cpu: vCPUs, e.g. 0.5 or 2; None: 1 (with `snapshot`, what its sandbox had).
            memory_mb: Memory in MiB; None: 512 (with `snapshot`, what its sandbox had). "auto":
                start with 256 MiB and let the node raise the limit as the sandbox needs, up to
                `memory_ceiling_mb` (4096 when None), instead of OOM-killing its processes.
            name: A name unique among this key's live sandboxes: lowercase letters, digits and '-',
                1 to 63 characters. `connect` and the CLI accept it in place of the id.
            metadata: Key/value pairs to find the sandbox by later (`list(metadata=...)`).
            envs: Environment variables every process in the sandbox starts with.
            timeout: The sandbox's lifetime in seconds; None lives until killed.
            isolation: "container" (fast, for trusted code), "gvisor" (a user-space kernel between
                the code and the host, for untrusted code) or "auto": chosen from `trust`.
            trust: "trusted" or "untrusted"; None means the tenant's default. With "auto",
                untrusted code runs under gVisor.
            snapshot: Start from this snapshot (id or name) instead of the bare template: its files,
                and for a gVisor snapshot its running processes. Its template and isolation class
                are the snapshot's; its environment variables too, unless `envs` overrides them.
            network: What the sandbox may reach, e.g. {"allow": ["api.github.com", "*.pypi.org"]};
                None reaches nothing (see `hutch.network` for the entries and `update_network`).
            auto_sleep_after: Put the sandbox to sleep after this many seconds with no call, no open
                terminal, stream or preview connection and almost no CPU: its memory (gVisor) and
                files are kept and its CPU and memory freed; the next request wakes it. None: never.
            memory_ceiling_mb: With it, memory grows automatically from `memory_mb` up to this.
            region: The region to run it in. None: the region of the gateway you call, or, when
                none of its nodes has room, the nearest region that has. Every region's gateway
                reaches it afterwards (`SandboxInfo.region` says where it runs).
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.
            request_timeout: Seconds to wait for this and each later call on the sandbox (not for
                commands or file transfers, which have their own limits); None waits as long as the
                gateway takes.

        Returns:
            The running sandbox.

        Raises:
            AuthenticationError: No API key is configured, or the gateway rejects it.
            NotFoundError: The template or the snapshot does not exist.
            InvalidArgumentError: An argument is out of range, e.g. a malformed name, or contradicts
                the snapshot (another template or isolation class).
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
                    snapshot=snapshot,
                    network=network,
                    auto_sleep_after=auto_sleep_after,
                    memory_ceiling_mb=memory_ceiling_mb,
                    region=region,
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
            A handle on the sandbox; later calls address it by id, even if it was found by name. A
            paused sandbox is resumed first, so the handle is ready to use.

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
        all_regions: bool = False,
        api_key: str | None = None,
        endpoint: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Lists this API key's sandboxes, following every page.

        Args:
            metadata: Only sandboxes whose metadata holds all of these pairs.
            states: Only sandboxes in these states, e.g. ["running"]; when None, all but killed and
                failed ones.
            all_regions: Every region's sandboxes, newest first across them (`SandboxInfo.region`
                says where each runs); by default only the region of the gateway you call.
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
            AsyncSandbox.list(
                metadata,
                states,
                all_regions=all_regions,
                api_key=api_key,
                endpoint=endpoint,
                request_timeout=request_timeout,
            )
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

    def update_network(
        self,
        network: NetworkSpec | None = None,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
        passthrough: Iterable[str] | None = None,
    ) -> NetworkPolicy:
        """Replaces what the sandbox may reach; new connections follow it within a second.

        Args:
            network: The whole new policy ({"allow": [...], "deny": [...], "passthrough": [...]}).
            allow, deny, passthrough: Or the lists themselves (omitted ones become empty).

        Returns:
            The policy as stored (normalized).

        Raises:
            InvalidArgumentError: An entry is malformed; the message names it.
            SandboxError: The sandbox has ended.
        """
        return PORTAL.run(self._async.update_network(network, allow=allow, deny=deny, passthrough=passthrough))

    def get_network(self) -> NetworkPolicy:
        """What the sandbox may reach now."""
        return PORTAL.run(self._async.get_network())

    def egress(self) -> EgressReport:
        """Bytes out and in per destination since the sandbox started, and its refusals."""
        return PORTAL.run(self._async.egress())

    def set_timeout(self, timeout: float | None) -> SandboxInfo:
        """Sets how long the sandbox may still live, counted from now.

        Args:
            timeout: Seconds until it is killed (fractions round up); None lets it live until killed.

        Returns:
            The sandbox as it is now, `expires_at` included.

        Raises:
            InvalidArgumentError: timeout is negative or too large.
            SandboxError: The sandbox is no longer running.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.set_timeout(timeout))

    def resize(self, cpu: float | None = None, memory_mb: int | None = None) -> SandboxInfo:
        """Changes the sandbox's CPU and memory while it runs, without restarting anything.

        Either class (container or gVisor) is resized in place; its processes keep running. The new
        size is what it is billed for from now on, and pauses and resumes keep it.

        Args:
            cpu: vCPUs it may use from now on, e.g. 0.5 or 2; None keeps the current value.
            memory_mb: Memory it may use from now on, in MiB; None keeps the current value.

        Returns:
            The sandbox as it is now, with its new size.

        Raises:
            InvalidArgumentError: Neither is given, or a value is outside the allowed bounds.
            ResourceExhaustedError: Its node has no room for the growth.
            SandboxError: It is not running, or the new memory is below what it uses now.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.resize(cpu, memory_mb))

    def get_preview_url(self, port: int, expires_in: float = 3600) -> str:
        """A URL that reaches a port inside the sandbox from outside, through the preview edge.

        Anything listening on the port in the sandbox (on any address) answers: HTTP, including
        WebSocket upgrades. For a private port (the default) the URL carries a signed token that
        opens this port of this sandbox only, until it expires; a public port needs none (see
        `set_port_public`).

        Args:
            port: The port inside the sandbox, 1 to 65535.
            expires_in: Seconds the URL's token stays valid; at most 30 days.

        Returns:
            The URL, e.g. "http://8080-sb-abc.localhost:50080/?hutch_token=...".

        Raises:
            InvalidArgumentError: The port or expires_in is out of range.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.get_preview_url(port, expires_in))

    def get_host(self, port: int) -> str:
        """The host (and, where it is not the scheme's default, the port) that reaches a sandbox port.

        Args:
            port: The port inside the sandbox, 1 to 65535.

        Returns:
            E.g. "8080-sb-abc.localhost:50080". Requests to it need a token unless the port is
            public: use `get_preview_url` for a URL that carries one.

        Raises:
            InvalidArgumentError: The port is out of range.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.get_host(port))

    def set_port_public(self, port: int, public: bool = True) -> SandboxInfo:
        """Lets anyone reach a sandbox port through the preview edge without a token, or stops that.

        Args:
            port: The port inside the sandbox, 1 to 65535.
            public: True to open it to everyone, False to require a token again.

        Returns:
            The sandbox as it is now, `public_ports` included.

        Raises:
            InvalidArgumentError: The port is out of range.
            SandboxError: The sandbox is not running.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.set_port_public(port, public))

    def snapshot(self, name: str | None = None, labels: Mapping[str, str] | None = None) -> SnapshotInfo:
        """Captures the sandbox as it is now, while it keeps running; returns once the snapshot is stored.

        A container sandbox's snapshot holds its filesystem; a gVisor sandbox's also its memory and
        running processes. Start new sandboxes from it with `create(snapshot=...)`.

        Args:
            name: A name unique among your snapshots (lowercase letters, digits and '-').
            labels: Key/value pairs to describe it.

        Raises:
            SandboxError: The sandbox is not running.
            AlreadyExistsError: A snapshot already has that name.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.snapshot(name, labels))

    def _pause(self) -> SandboxInfo:
        """Snapshots the sandbox and frees its CPU and memory; it stays paused until resumed.

        Its files (and under gVisor its running processes) are kept in the snapshot. While paused,
        commands and file calls fail with SandboxError, and its timeout does not run. Pausing a
        paused sandbox changes nothing. Call it on the class with an id or name,
        `Sandbox.pause("sb-...")`, to pause a sandbox without connecting to it.

        Returns:
            The sandbox, now paused.

        Raises:
            SandboxError: The sandbox is still starting, or is being killed or has ended.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.pause())

    pause = HybridMethod(_pause, _pause_by_id_sync)

    def _resume(self) -> SandboxInfo:
        """Starts a paused sandbox again from its snapshot and returns once it runs.

        Resuming a running sandbox changes nothing. Call it on the class with an id or name,
        `Sandbox.resume("sb-...")`; `connect` resumes a paused sandbox too.

        Returns:
            The sandbox, running.

        Raises:
            ResourceExhaustedError: No node has room for it now; it stays paused.
            SandboxError: It is being killed or has ended.
            HutchError: Another failure; the subclass says which.
        """
        return PORTAL.run(self._async.resume())

    resume = HybridMethod(_resume, _resume_by_id_sync)

    def fork(self, count: int = 1, metadata: Mapping[str, str] | None = None) -> builtins.list[Self]:
        """New sandboxes that start with this one's state; returns once they all run.

        Each child gets a copy of the files (under gVisor also of the memory and running
        processes, which go on in each child on their own), this sandbox's template, isolation
        class, resources, environment and timeout, and its metadata with `metadata` on top. All or
        nothing: if one cannot start, none is kept.

        Args:
            count: How many, 1 to 100.
            metadata: Added to each child's metadata.

        Raises:
            SandboxError: The sandbox is not running.
            ResourceExhaustedError: There is no room for all of them.
            HutchError: Another failure; the subclass says which.
        """
        return [type(self)(child) for child in PORTAL.run(self._async.fork(count, metadata))]

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
