"""One run of `up()` with several regions: every region's ports first, then every region's servers
(their NATS servers joined as a supercluster), then every region's services.

The order matters: a NATS server's gateway configuration names every region's gateway port, and a
service's settings name the other regions' gateways and snapshot-stores, so all ports are resolved
before anything starts. JetStream needs a majority of all the supercluster's servers to create a
stream, so services start only once the regions have joined.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from hutch.local.credentials import StackSecrets
from hutch.local.model import Event, Observer, StackError, StackOptions, UpResult
from hutch.local.paths import StackPaths
from hutch.local.process import live_children
from hutch.local.regions import database_name, region_options
from hutch.local.servers import NatsGateway
from hutch.local.starting import Starter, kill_new_children

T = TypeVar("T")


def in_region(observer: Observer, region: str) -> Observer:
    """An observer that names the region in front of each component."""

    def observe(component: str, event: Event, detail: str = "") -> None:
        observer(f"{region}/{component}", event, detail)

    return observe


class RegionsStarter:
    """Starts `count` regions; on failure stops everything started, last region first."""

    def __init__(
        self, options: StackOptions, count: int, secrets: StackSecrets, observer: Observer, detach: bool
    ) -> None:
        self.options = options
        self.count = count
        self.secrets = secrets
        self.observer = observer
        self.detach = detach
        self.starters: list[Starter] = []
        # The region whose step failed: it alone reports the failed component.
        self.failing: Starter | None = None

    def run(self) -> list[UpResult]:
        children_before = {handle.pid for handle in live_children()}
        try:
            return self._run()
        except BaseException as exc:
            for starter in reversed(self.starters):
                starter.abort(exc, report=starter is self.failing)
            kill_new_children(children_before)
            raise

    def _run(self) -> list[UpResult]:
        first = self._add(self.options, self.observer)
        for index in range(2, self.count + 1):
            options = region_options(self.options, index, first.postgres, first.s3)
            self._add(options, in_region(self.observer, options.region))
        self._check_ports_apart()
        gateway_ports = {starter.options.region: starter.ports["nats-gateway"] for starter in self.starters}
        for starter in self.starters:
            gateway = NatsGateway(
                region=starter.options.region,
                port=starter.ports["nats-gateway"],
                gateway_ports=gateway_ports,
                cluster_port=starter.ports["nats-cluster"],
                monitor_port=starter.ports["nats-monitor"],
            )
            self._step(starter, partial(starter.start_servers, gateway))
            if starter is first:
                for other in self.starters[1:]:
                    self._step(first, partial(self._create_database, first, other))
        self._wait_joined()
        ports = {starter.options.region: starter.ports for starter in self.starters}
        results = []
        for starter in self.starters:
            peers = {region: its for region, its in ports.items() if region != starter.options.region}
            results.append(self._step(starter, partial(starter.start_services, peers)))
        return results

    def _add(self, options: StackOptions, observer: Observer) -> Starter:
        starter = Starter(options, StackPaths(options.home), self.secrets, observer, self.detach)
        self.starters.append(starter)
        self._step(starter, partial(starter.plan, nats_link=True))
        return starter

    def _step(self, starter: Starter, action: Callable[[], T]) -> T:
        """Runs one step of one region, naming the region in what it raises (after the first)."""
        self.failing = starter
        try:
            return action()
        except StackError as exc:
            if starter is self.starters[0]:
                raise
            region = starter.options.region
            raise StackError(f"region {region}: {exc}", component=exc.component, log_tail=exc.log_tail) from exc

    def _check_ports_apart(self) -> None:
        taken: dict[int, str] = {}
        for starter in self.starters:
            for component, port in starter.ports.items():
                owner = f"{component} of region {starter.options.region}"
                if port in taken:
                    raise StackError(f"{owner} and {taken[port]} are both given port {port}", component=component)
                taken[port] = owner

    @staticmethod
    def _create_database(first: Starter, other: Starter) -> None:
        name = database_name(other.options.region)
        try:
            first.postgres.ensure_database(name)
        except RuntimeError as exc:
            raise StackError(f"postgres: cannot create database {name!r}: {exc}", component="postgres") from exc

    def _wait_joined(self) -> None:
        timeout = self.options.startup_timeout_s
        deadline = time.monotonic() + timeout
        waiting: Sequence[Starter] = list(self.starters)
        while waiting:
            for starter in waiting:
                process = starter.nats.process
                if process is not None and not process.alive():
                    self.failing = starter
                    raise StackError(
                        f"the NATS server of region {starter.options.region} exited",
                        component="nats",
                        log_tail=starter.nats.log_excerpt(),
                    )
            waiting = [starter for starter in waiting if not starter.nats.joined()]
            if waiting and time.monotonic() >= deadline:
                starter = waiting[0]
                self.failing = starter
                raise StackError(
                    f"the NATS server of region {starter.options.region} did not join the other regions "
                    f"within {timeout:.0f}s",
                    component="nats",
                    log_tail=starter.nats.log_excerpt(),
                )
            time.sleep(0.1)
