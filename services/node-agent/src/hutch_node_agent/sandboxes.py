"""The sandboxes of one node: create, kill, find again after a restart, notice when one ends.

Every operation on a sandbox holds that sandbox's lock, so a kill that arrives while the create is
still running waits for it, and a redelivered create for a running sandbox is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hutch.core import errors, telemetry
from hutch.core.warm_pool import is_pool_member
from hutch_node_agent import oci, rootfs, sandbox_egress
from hutch_node_agent.activity import Activity
from hutch_node_agent.cgroup_limits import CgroupLimits, Limits
from hutch_node_agent.cgroup_stats import CgroupStats
from hutch_node_agent.domain import LocalSandbox, SandboxRequest, SnapshotSource, check_sandbox_id
from hutch_node_agent.layers import Layers
from hutch_node_agent.layout import NodeLayout, SandboxPaths
from hutch_node_agent.network import SandboxNetworks
from hutch_node_agent.quota import DiskQuotas
from hutch_node_agent.runtime import CONTAINER, GVISOR, OciRuntime
from hutch_node_agent.settings import NodeOptions
from hutch_node_agent.supervisor.bundle import SupervisorRuntime
from hutch_node_agent.supervisor.client import SupervisorClient
from hutch_node_agent.supervisor.protocol import RELISTEN_SIGNAL
from hutch_node_agent.templates import TemplateStore

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("hutch.node_agent")
# How often a restored sandbox is asked again to reopen its supervisor's listener.
RELISTEN_RETRY_S = 1.0

# Called a little before a sandbox's timeout fires, with when it fires.
WarningCallback = Callable[[LocalSandbox, datetime], Awaitable[None]]


async def _no_warning(sandbox: LocalSandbox, fires_at: datetime) -> None:
    return None


# Called once when a sandbox that was running has stopped, with the reason ("killed", "timeout",
# "exited"); the node-agent publishes the stopped event from it.
StoppedCallback = Callable[[LocalSandbox, str], Awaitable[None]]

# Called with a sandbox that was running just before its runtime state and cgroup are removed (on a
# kill, when it ended by itself, or when a restart finds it ended): the last moment its cgroup's
# counters can be read. It must not raise.
ReleasingCallback = Callable[[LocalSandbox], Awaitable[None]]


async def _nothing_to_release(sandbox: LocalSandbox) -> None:
    return None


# Called right after a running sandbox's limits changed, with the sandbox (its request already the
# new size) and the request it had before: metering switches its allocation at that moment. It
# must not raise.
ResizedCallback = Callable[[LocalSandbox, SandboxRequest], Awaitable[None]]


async def _nothing_to_meter(sandbox: LocalSandbox, previous: SandboxRequest) -> None:
    return None


@dataclass(frozen=True)
class Resized:
    sandbox: LocalSandbox
    previous: SandboxRequest
    # Memory the sandbox used when it was resized, reclaimable page cache left out.
    memory_in_use_bytes: int


class SandboxManager:
    def __init__(
        self,
        options: NodeOptions,
        layout: NodeLayout,
        runtimes: dict[str, OciRuntime],
        templates: TemplateStore,
        supervisor: SupervisorRuntime,
        on_stopped: StoppedCallback,
        networks: SandboxNetworks | None = None,
        quotas: DiskQuotas | None = None,
        on_timeout_warning: WarningCallback | None = None,
        on_releasing: ReleasingCallback | None = None,
        on_resized: ResizedCallback | None = None,
        limits: CgroupLimits | None = None,
    ) -> None:
        self._options = options
        self._on_resized = on_resized or _nothing_to_meter
        self._limits = limits or CgroupLimits(options.cgroup_parent)
        self._stats = CgroupStats(options.cgroup_parent)
        self._networks = networks
        self._quotas = quotas
        self.layers = Layers(quotas, options.disk_quota_mb * 2**20, options.userns_shift)
        self._layout = layout
        self._runtimes = runtimes
        self._templates = templates
        self._supervisor = supervisor
        self._on_stopped = on_stopped
        self._on_timeout_warning = on_timeout_warning or _no_warning
        self._on_releasing = on_releasing or _nothing_to_release
        self._sandboxes: dict[str, LocalSandbox] = {}
        # Connections to each sandbox's supervisor, for sleep on idle (see activity.py).
        self.activity = Activity()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._watchers: dict[str, int] = {}
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- queries ---------------------------------------------------------------------------

    def running(self, sandbox_id: str) -> LocalSandbox:
        """The sandbox, if it runs here; raises NotFound or FailedPrecondition otherwise."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.NotFound(f"sandbox {sandbox_id} is not on this node")
        if sandbox.status != "running":
            raise errors.FailedPrecondition(f"sandbox {sandbox_id} is {sandbox.status}, not running")
        return sandbox

    def supervisor(self, sandbox_id: str) -> SupervisorClient:
        return SupervisorClient(self._layout.sandbox(sandbox_id).socket, self.activity.watcher(sandbox_id))

    def all(self) -> list[LocalSandbox]:
        return list(self._sandboxes.values())

    def allocated(self) -> tuple[int, int]:
        """(cpu millis, memory MB) held by sandboxes that are starting or running."""
        live = [s.request for s in self._sandboxes.values() if s.status in ("starting", "running")]
        return sum(r.cpu_millis for r in live), sum(r.memory_mb for r in live)

    # -- create ----------------------------------------------------------------------------

    async def create(self, request: SandboxRequest, source: SnapshotSource | None = None) -> LocalSandbox:
        """Starts a sandbox: fresh from its template, or from a snapshot's frozen layer (and, for a
        memory snapshot, with its processes resumed from the checkpoint image)."""
        check_sandbox_id(request.sandbox_id)
        async with self._locks[request.sandbox_id]:
            existing = self._sandboxes.get(request.sandbox_id)
            if existing is not None and existing.status == "running":
                return existing  # a redelivered command: the sandbox already runs
            if existing is not None:
                raise errors.FailedPrecondition(f"sandbox {request.sandbox_id} is {existing.status}")
            self._check_capacity(request)
            self._runtime_for(request.isolation)
            template = self._templates.get(request.template)
            if template.uid_shift != self._options.userns_shift:
                template = await asyncio.to_thread(
                    self._templates.ensure_shift, request.template, self._options.userns_shift
                )
            env = dict(item.split("=", 1) for item in template.env if "=" in item)
            preload = self._supervisor.gvisor_preload() if request.isolation == GVISOR else None
            if preload:
                env["LD_PRELOAD"] = preload
            if self._options.egress_proxy is not None:  # trust the proxy's CA (the sandbox may override)
                env.update(sandbox_egress.ca_env(self._options.egress_proxy.ca_file))
            env.update(request.envs)
            sandbox = LocalSandbox(
                request=request,
                status="starting",
                env=env,
                default_user=template.user,
                workdir=template.workdir,
            )
            paths = self._layout.sandbox(request.sandbox_id)
            self._sandboxes[sandbox.id] = sandbox
            try:
                await self._start(sandbox, paths, template.rootfs, source)
            except BaseException:
                await self._teardown(sandbox.id, paths, request.isolation)
                self._sandboxes.pop(sandbox.id, None)
                raise
            return sandbox

    def _runtime_for(self, isolation: str) -> OciRuntime:
        runtime = self._runtimes.get(isolation)
        if runtime is None:
            raise errors.FailedPrecondition(
                f"node {self._options.id} cannot run the {isolation!r} isolation class; "
                f"it offers {', '.join(sorted(self._runtimes))}"
            )
        return runtime

    def _check_capacity(self, request: SandboxRequest) -> None:
        cpu, memory = self.allocated()
        cpu_total, memory_total = self._options.measured_cpu_millis(), self._options.measured_memory_mb()
        if cpu + request.cpu_millis > cpu_total or memory + request.memory_mb > memory_total:
            raise errors.ResourceExhausted(
                f"node {self._options.id} has {cpu_total - cpu} mCPU and {memory_total - memory} MB free; "
                f"the sandbox asks for {request.cpu_millis} mCPU and {request.memory_mb} MB"
            )

    async def _start(
        self, sandbox: LocalSandbox, paths: SandboxPaths, template_rootfs: Path, source: SnapshotSource | None = None
    ) -> None:
        if paths.dir.exists() or paths.layer.exists():  # leftovers of an attempt that died half-way
            await self._teardown(sandbox.id, paths, sandbox.request.isolation)
        owner = self._options.userns_shift  # the host uid of the sandbox's root
        paths.dir.mkdir(parents=True)
        paths.run.mkdir(mode=0o700)
        os.chown(paths.run, owner, owner)
        if source is None:
            await self.layers.make(paths.layer)
        else:
            await self.layers.clone(source.frozen_layer, paths.layer)
        network = None
        # gVisor sandboxes need a link only to reach the egress-proxy (previews go through the supervisor).
        proxied = self._options.egress_proxy is not None
        if self._networks is not None and (sandbox.request.isolation == CONTAINER or proxied):
            with _tracer.start_as_current_span("network"):
                network = await self._networks.create(sandbox.id)
        with _tracer.start_as_current_span("mount rootfs"):
            rootfs.mount_overlay([template_rootfs], paths.upper, paths.work, paths.rootfs)
            _write_identity_files(paths, sandbox.id, owner)
            extra_mounts = sandbox_egress.prepare(
                paths.rootfs,
                paths.dir,
                network.host_ip if network is not None and proxied else None,
                self._options.egress_proxy.ca_file if self._options.egress_proxy is not None else None,
                owner,
            )
        spec = oci.ContainerSpec(
            sandbox_id=sandbox.id,
            rootfs=str(paths.rootfs),
            supervisor_argv=self._supervisor.argv(),
            supervisor_env=self._supervisor.env(f"{oci.RUN_MOUNT}/{paths.socket.name}", sandbox.default_user),
            supervisor_dir=str(self._supervisor.host_dir),
            supervisor_mount=self._supervisor.MOUNT_POINT,
            run_dir=str(paths.run),
            cpu_millis=sandbox.request.cpu_millis,
            memory_mb=sandbox.request.memory_mb,
            pids_limit=self._options.pids_limit,
            open_files_limit=self._options.open_files_limit,
            cgroup_path=f"/{self._options.cgroup_parent}/{sandbox.id}",
            netns_path=network.netns_path if network is not None else None,
            isolation=sandbox.request.isolation,
            uid_shift=owner,
            extra_mounts=extra_mounts,
        )
        paths.config.write_text(json.dumps(oci.container_config(spec)))
        self._save(sandbox, paths)
        runtime = self._runtime_for(sandbox.request.isolation)
        if source is not None and source.image is not None:
            with _tracer.start_as_current_span("runtime restore"):
                sandbox.init_pid = await runtime.restore_detached(sandbox.id, paths.dir, paths.log, source.image)
            with _tracer.start_as_current_span("supervisor ready"):
                await self._wake_restored(sandbox.id, paths, runtime)
        else:
            with _tracer.start_as_current_span("runtime start"):
                netns = network.netns_path if network is not None else None
                sandbox.init_pid = await runtime.run_detached(sandbox.id, paths.dir, paths.log, netns)
            with _tracer.start_as_current_span("supervisor ready"):
                await SupervisorClient(paths.socket).wait_ready(self._options.start_timeout_s)
        if sandbox.request.memory_ceiling_mb > sandbox.request.memory_mb:
            # Before anything of its owner runs: a process reaching the limit waits for the
            # memory autoscaler's next look (100 ms) instead of being OOM-killed first.
            try:
                await asyncio.to_thread(self._limits.hold_at_limit, sandbox.id, True)
            except errors.HutchError as exc:  # the autoscaler tries again on its first look
                log.warning("sandbox %s: cannot hold its processes at the memory limit: %s", sandbox.id, exc.message)
        sandbox.status = "running"
        sandbox.started_at = datetime.now(UTC)
        if sandbox.request.timeout_seconds:
            sandbox.deadline = sandbox.started_at + timedelta(seconds=sandbox.request.timeout_seconds)
        self._save(sandbox, paths)
        self._watch(sandbox)

    # -- warm pools --------------------------------------------------------------------------

    async def adopt(self, request: SandboxRequest) -> LocalSandbox:
        """Hands a running warm pool member to the tenant `request` names (hutch.core.warm_pool).

        The sandbox runs on untouched; what changes is whose it is and how it is treated: owner,
        name, labels, the environment its processes start with, timeout (counted from now), idle
        policy and network. Its usage is metered from this moment. A sandbox that is not an
        unclaimed member, or a request for another template, class or size, is refused.
        """
        check_sandbox_id(request.sandbox_id)
        async with self._locks[request.sandbox_id]:
            sandbox = self.running(request.sandbox_id)
            pooled = sandbox.request
            if not is_pool_member(pooled.tenant_id):
                raise errors.FailedPrecondition(f"sandbox {sandbox.id} is not an unclaimed warm pool member")
            if not request.tenant_id or is_pool_member(request.tenant_id):
                raise errors.InvalidArgument("a warm pool member can only be handed to a tenant")
            wanted = (request.template, request.isolation, request.cpu_millis, request.memory_mb)
            offered = (pooled.template, pooled.isolation, pooled.cpu_millis, pooled.memory_mb)
            if wanted != offered or request.snapshot_id or request.memory_ceiling_mb:
                raise errors.FailedPrecondition(
                    f"warm pool member {sandbox.id} is {offered}; it cannot become {wanted} "
                    "(and never one from a snapshot or with automatic memory)"
                )
            counters = await asyncio.to_thread(self._stats.read, sandbox.id)
            now = datetime.now(UTC)
            # No await from here on: the metering loop sees the member, or the tenant's sandbox whole.
            sandbox.env = {**sandbox.env, **request.envs}
            sandbox.request = request
            sandbox.started_at = now
            sandbox.metered_from_cpu_ns = counters.cpu_ns if counters is not None else 0
            sandbox.deadline = now + timedelta(seconds=request.timeout_seconds) if request.timeout_seconds else None
            self._save(sandbox, self._layout.sandbox(sandbox.id))
            self._schedule_deadline(sandbox)
            self.activity.touch(sandbox.id)
            log.info("warm pool member %s handed to tenant %s", sandbox.id, request.tenant_id)
            return sandbox

    # -- resize ----------------------------------------------------------------------------

    async def resize(self, sandbox_id: str, cpu_millis: int, memory_mb: int) -> Resized:
        """Changes a running sandbox's CPU and memory limits in place (0 keeps a value as it is).

        Growth must fit in what the node has free; memory may not shrink below what the sandbox
        uses now (its processes would be OOM-killed), which is refused before anything changes.
        The new size is written to the sandbox's record and its OCI config, so a restart of the
        node-agent, a gVisor restore in place and a snapshot's spec all keep it.
        """
        check_sandbox_id(sandbox_id)
        async with self._locks[sandbox_id]:
            sandbox = self.running(sandbox_id)
            previous = sandbox.request
            wanted = replace(
                previous, cpu_millis=cpu_millis or previous.cpu_millis, memory_mb=memory_mb or previous.memory_mb
            )
            in_use = await asyncio.to_thread(self._limits.memory_in_use, sandbox_id)
            if wanted.memory_mb < previous.memory_mb and in_use >= wanted.memory_mb * 2**20:
                raise errors.FailedPrecondition(
                    f"sandbox {sandbox_id} uses {_mib(in_use)} MB of memory now: it cannot shrink to "
                    f"{wanted.memory_mb} MB (free some memory in it first, or keep at least {_mib(in_use) + 1} MB)"
                )
            if wanted == previous:
                return Resized(sandbox, previous, in_use)
            self._check_growth(previous, wanted)
            # Taken at once (before any await), so a create or resize meanwhile sees it held.
            sandbox.request = wanted
            limits = Limits(
                cpu_quota_us=wanted.cpu_millis * oci.CPU_PERIOD_US // 1000,
                cpu_period_us=oci.CPU_PERIOD_US,
                memory_bytes=wanted.memory_mb * 2**20,
            )
            try:
                await asyncio.to_thread(self._limits.apply, sandbox_id, limits)
            except BaseException:
                sandbox.request = previous
                with contextlib.suppress(Exception):  # put back what was there, whatever got written
                    await asyncio.to_thread(self._limits.apply, sandbox_id, _limits_of(previous))
                raise
            paths = self._layout.sandbox(sandbox_id)
            await asyncio.to_thread(_rewrite_resources, paths.config, limits)
            self._save(sandbox, paths)
            await self._on_resized(sandbox, previous)
            log.info(
                "sandbox %s resized from %d mCPU / %d MB to %d mCPU / %d MB",
                sandbox_id, previous.cpu_millis, previous.memory_mb, wanted.cpu_millis, wanted.memory_mb,
            )  # fmt: skip
            return Resized(sandbox, previous, in_use)

    def _check_growth(self, previous: SandboxRequest, wanted: SandboxRequest) -> None:
        cpu, memory = self.allocated()
        cpu_total, memory_total = self._options.measured_cpu_millis(), self._options.measured_memory_mb()
        grow_cpu = wanted.cpu_millis - previous.cpu_millis
        grow_memory = wanted.memory_mb - previous.memory_mb
        if (grow_cpu > 0 and cpu + grow_cpu > cpu_total) or (grow_memory > 0 and memory + grow_memory > memory_total):
            raise errors.ResourceExhausted(
                f"node {self._options.id} has {max(0, cpu_total - cpu)} mCPU and {max(0, memory_total - memory)} MB "
                f"free; growing sandbox {previous.sandbox_id} to {wanted.cpu_millis} mCPU and {wanted.memory_mb} MB "
                f"needs {max(0, grow_cpu)} mCPU and {max(0, grow_memory)} MB more"
            )

    # -- snapshots -------------------------------------------------------------------------

    async def capture(self, sandbox_id: str, frozen: Path, image: Path | None, *, stop: bool = False) -> LocalSandbox:
        """Freezes the sandbox's writable layer into `frozen` and, when `image` is given (gVisor),
        its memory and processes into that folder, as one consistent moment.

        A container is held still with the cgroup freezer while its layer is frozen (milliseconds);
        its connections and processes carry on untouched. A gVisor sandbox is checkpointed, which
        stops it, and then restored in place: calls streaming at that moment end (its supervisor has
        to let go of host sockets), background processes and terminals carry on. With `stop` the
        sandbox is not resumed but released, as a kill would (pause).
        """
        async with self._locks[sandbox_id]:
            sandbox = self.running(sandbox_id)
            paths = self._layout.sandbox(sandbox_id)
            runtime = self._runtime_for(sandbox.request.isolation)
            if image is None:
                await runtime.pause(sandbox_id)
                try:
                    await self.layers.freeze(paths.layer, frozen)
                finally:
                    if not stop:
                        await runtime.resume(sandbox_id)
            else:
                await self._checkpoint(sandbox, paths, runtime, frozen, image)
                if not stop:
                    await self._restore_in_place(sandbox, paths, runtime, image)
            if stop:
                sandbox.status = "stopping"
                await self._on_releasing(sandbox)
                await self._teardown(sandbox_id, paths, sandbox.request.isolation)
                sandbox.status = "stopped"
                self._sandboxes.pop(sandbox_id, None)
            return sandbox

    async def _checkpoint(
        self, sandbox: LocalSandbox, paths: SandboxPaths, runtime: OciRuntime, frozen: Path, image: Path
    ) -> None:
        # While it is checkpointed its init exits: that must not read as the sandbox ending.
        sandbox.status = "snapshotting"
        self._unwatch(sandbox.id)
        client = SupervisorClient(paths.socket)
        try:
            await client.quiesce()
        except BaseException:
            sandbox.status = "running"
            self._watch(sandbox)
            raise
        try:
            image.mkdir(parents=True, exist_ok=True)
            await runtime.checkpoint(sandbox.id, image)
        except BaseException:
            state = await runtime.state(sandbox.id)
            if state is not None and state.status == "running":
                await runtime.signal(sandbox.id, RELISTEN_SIGNAL)
                sandbox.status = "running"
                self._watch(sandbox)
            else:  # the failed checkpoint took the sandbox down with it
                self._spawn(self._ended_during_snapshot(sandbox.id))
            raise
        await self.layers.freeze(paths.layer, frozen)

    async def _restore_in_place(
        self, sandbox: LocalSandbox, paths: SandboxPaths, runtime: OciRuntime, image: Path
    ) -> None:
        try:
            await runtime.delete(sandbox.id)
            sandbox.init_pid = await runtime.restore_detached(sandbox.id, paths.dir, paths.log, image)
            await self._wake_restored(sandbox.id, paths, runtime)
        except BaseException:
            self._spawn(self._ended_during_snapshot(sandbox.id))
            raise
        sandbox.status = "running"
        self._save(sandbox, paths)
        self._watch(sandbox)

    async def _wake_restored(self, sandbox_id: str, paths: SandboxPaths, runtime: OciRuntime) -> None:
        """Asks a restored supervisor to listen again until it answers.

        The supervisor closed its listener before the checkpoint. A signal that reaches the sandbox
        while runsc is still bringing its processes back can go unseen, so it is repeated every
        RELISTEN_RETRY_S (reopening is idempotent) until a ping answers or start_timeout_s passes.
        """
        client = SupervisorClient(paths.socket)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.start_timeout_s
        while True:
            await runtime.signal(sandbox_id, RELISTEN_SIGNAL)
            try:
                await client.wait_ready(min(RELISTEN_RETRY_S, max(deadline - loop.time(), 0.01)))
                return
            except errors.Unavailable:
                if loop.time() >= deadline:
                    raise

    async def _ended_during_snapshot(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None and sandbox.status == "snapshotting":
            sandbox.status = "running"  # so that kill releases it like any sandbox that ended
            await self.kill(sandbox_id, "exited")

    # -- kill ------------------------------------------------------------------------------

    async def kill(self, sandbox_id: str, reason: str) -> bool:
        """Stops the sandbox and frees everything it held.

        Returns True when it was running, in which case the stopped callback has been called;
        False when it was not running here.
        """
        check_sandbox_id(sandbox_id)
        async with self._locks[sandbox_id]:
            sandbox = self._sandboxes.get(sandbox_id)
            paths = self._layout.sandbox(sandbox_id)
            if sandbox is None:
                if paths.dir.exists():  # a folder without a live record: clean it up anyway
                    await self._teardown(sandbox_id, paths, None)
                return False
            was_running = sandbox.status == "running"
            sandbox.status = "stopping"
            if was_running:
                await self._on_releasing(sandbox)
            await self._teardown(sandbox_id, paths, sandbox.request.isolation)
            sandbox.status = "stopped"
            self._sandboxes.pop(sandbox_id, None)
        if was_running:
            await self._on_stopped(sandbox, reason)
        return was_running

    async def _teardown(self, sandbox_id: str, paths: SandboxPaths, isolation: str | None) -> None:
        self._unwatch(sandbox_id)
        # Without a record (isolation None) every runtime is asked: nothing says which one ran it.
        chosen = self._runtimes.get(isolation or "")
        for runtime in [chosen] if chosen is not None else list(self._runtimes.values()):
            await runtime.kill(sandbox_id)
            await runtime.delete(sandbox_id)
        rootfs.unmount(paths.rootfs)
        if self._networks is not None:
            await self._networks.destroy(sandbox_id)
        await self.layers.drop(paths.layer)
        await asyncio.to_thread(shutil.rmtree, paths.dir, True)

    # -- restart recovery ------------------------------------------------------------------

    async def recover(self) -> list[LocalSandbox]:
        """Finds the sandboxes a previous node-agent process left; returns those that had ended."""
        ended: list[LocalSandbox] = []
        if not self._layout.sandboxes.is_dir():
            return ended
        states = {}
        for runtime in self._runtimes.values():
            states.update(await runtime.list())
        for folder in sorted(self._layout.sandboxes.iterdir()):
            paths = self._layout.sandbox(folder.name)
            try:
                sandbox = LocalSandbox.from_record(json.loads(paths.record.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("removing %s: unreadable record (%s)", folder, exc)
                await self._teardown(folder.name, paths, None)
                continue
            state = states.get(sandbox.id)
            if sandbox.status == "running" and state is not None and state.status == "running":
                sandbox.init_pid = state.pid
                self._sandboxes[sandbox.id] = sandbox
                self._watch(sandbox)
                log.info("found running sandbox %s again (init pid %d)", sandbox.id, state.pid)
                continue
            log.info("sandbox %s ended while the node-agent was away", sandbox.id)
            if sandbox.status == "running":
                await self._on_releasing(sandbox)
            await self._teardown(sandbox.id, paths, sandbox.request.isolation)
            if sandbox.status == "running":
                ended.append(sandbox)
        if self._networks is not None:
            await self._networks.recover(self._sandboxes)
        return ended

    # -- watching for ends -----------------------------------------------------------------

    def _watch(self, sandbox: LocalSandbox) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(sandbox.init_pid)
        except ProcessLookupError:
            self._spawn(self._ended_by_itself(sandbox.id))
            return
        self._watchers[sandbox.id] = fd
        loop.add_reader(fd, lambda: self._spawn(self._ended_by_itself(sandbox.id)))
        self._schedule_deadline(sandbox)

    def _schedule_deadline(self, sandbox: LocalSandbox) -> None:
        """Arms the sandbox's timeout: a warning a little before, then the kill."""
        self._cancel_timers(sandbox.id)
        if sandbox.deadline is None:
            return
        loop = asyncio.get_running_loop()
        remaining = (sandbox.deadline - datetime.now(UTC)).total_seconds()
        # At most a tenth of what is left, so that a short timeout still warns before it fires.
        lead = min(self._options.timeout_warning_s, remaining / 10)
        timers = [loop.call_later(max(0.0, remaining), lambda: self._spawn(self.kill(sandbox.id, "timeout")))]
        if lead > 0:
            warn = self._on_timeout_warning(sandbox, sandbox.deadline)
            timers.append(loop.call_later(remaining - lead, lambda: self._spawn(warn)))
        self._timers[sandbox.id] = timers

    async def set_deadline(self, sandbox_id: str, deadline: datetime | None) -> None:
        """Replaces when the sandbox's timeout fires (None: it lives until killed)."""
        async with self._locks[sandbox_id]:
            sandbox = self.running(sandbox_id)
            sandbox.deadline = deadline
            self._save(sandbox, self._layout.sandbox(sandbox_id))
            self._schedule_deadline(sandbox)

    def _cancel_timers(self, sandbox_id: str) -> None:
        for timer in self._timers.pop(sandbox_id, []):
            timer.cancel()

    def _unwatch(self, sandbox_id: str) -> None:
        fd = self._watchers.pop(sandbox_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self._cancel_timers(sandbox_id)

    def _spawn(self, coro: Awaitable[object], discard: bool = False) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("background sandbox task failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ended_by_itself(self, sandbox_id: str) -> None:
        self._unwatch(sandbox_id)
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.status != "running":
            return  # a kill is already taking care of it
        log.info("sandbox %s ended: its init process exited", sandbox_id)
        await self.kill(sandbox_id, "exited")

    async def close(self) -> None:
        """Stops watching; sandboxes keep running for the next node-agent process."""
        for sandbox_id in list(self._watchers):
            self._unwatch(sandbox_id)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _save(self, sandbox: LocalSandbox, paths: SandboxPaths) -> None:
        tmp = paths.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(sandbox.to_record()))
        tmp.replace(paths.record)


def _mib(size: int) -> int:
    return -(-size // 2**20)


def _limits_of(request: SandboxRequest) -> Limits:
    return Limits(request.cpu_millis * oci.CPU_PERIOD_US // 1000, oci.CPU_PERIOD_US, request.memory_mb * 2**20)


def _rewrite_resources(config: Path, limits: Limits) -> None:
    """Writes the new limits into the sandbox's OCI config (a gVisor restore in place reads it again)."""
    data = json.loads(config.read_text())
    oci.set_resources(data, limits.cpu_quota_us, limits.cpu_period_us, limits.memory_bytes)
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(config)


def _write_identity_files(paths: SandboxPaths, hostname: str, owner: int) -> None:
    """Writes /etc/hostname and /etc/hosts into the sandbox's root from the host side.

    The template may be an untrusted image, so nothing here follows a symbolic link: a planted
    `/etc -> /host/path` or `/etc/hosts -> ...` must not make the node-agent write outside the sandbox.
    """
    root = os.open(paths.rootfs, os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.mkdir("etc", 0o755, dir_fd=root)
        except FileExistsError:
            pass
        etc = os.open("etc", os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
        try:
            hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{hostname}\n"
            for name, content in (("hostname", f"{hostname}\n"), ("hosts", hosts)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=etc)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
                with os.fdopen(fd, "w") as out:
                    os.fchown(out.fileno(), owner, owner)
                    out.write(content)
        finally:
            os.close(etc)
    except OSError as exc:
        raise errors.InvalidArgument(f"the template's /etc cannot hold the sandbox's host files: {exc}") from exc
    finally:
        os.close(root)
