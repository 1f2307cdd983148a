"""One run of `up()`: resolve ports, start the servers, then the services, and clean up on failure."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hutch.local import state as state_file
from hutch.local.credentials import StackSecrets
from hutch.local.files import read_json, write_json_private
from hutch.local.health import grpc_serving
from hutch.local.model import (
    NATS_LINK_PORTS,
    SERVER_PORTS,
    Event,
    Observer,
    StackError,
    StackOptions,
    UpResult,
    default_ports,
)
from hutch.local.paths import StackPaths
from hutch.local.ports import LOOPBACK, free_port, port_in_use
from hutch.local.process import live_children, log_offset, log_tail, spawn, start_ticks
from hutch.local.servers import ManagedServer, NatsGateway, NatsServer, PostgresServer, S3Server, ServerStartError
from hutch.local.services import SERVICES, ServiceContext, ServiceSpec, installed_script, service, service_env
from hutch.local.state import ComponentState, StackState
from hutch.local.stopping import stop_components


class Starter:
    """One run of `up()`: resolves ports, starts servers then services, cleans up on failure."""

    def __init__(
        self,
        options: StackOptions,
        paths: StackPaths,
        secrets: StackSecrets,
        observer: Observer,
        detach: bool,
    ) -> None:
        self.options = options
        self.paths = paths
        self.secrets = secrets
        self.observer = observer
        self.detach = detach
        self.state: StackState | None = None
        # Set by plan().
        self.specs: list[ServiceSpec] = []
        self.skipped: list[str] = []
        self.ports: dict[str, int] = {}
        self.postgres: PostgresServer
        self.s3: S3Server
        # Set by start_servers().
        self.nats: NatsServer

    def run(self) -> UpResult:
        children_before = {handle.pid for handle in live_children()}
        try:
            self.plan()
            self.start_servers()
            return self.start_services()
        except BaseException as exc:
            self.abort(exc)
            kill_new_children(children_before)
            raise

    def abort(self, exc: BaseException, *, report: bool = True) -> None:
        """Stops what this run started and forgets it, after `exc` ended the start (`report`: show
        the component `exc` names as failed, when it is one of this stack's)."""
        failed = exc.component if isinstance(exc, StackError) and report else None
        if failed is not None:
            self.observer(failed, "failed", str(exc))

        def cleanup_observer(component: str, event: Event, detail: str = "") -> None:
            # The failed component keeps showing "failed" while the others are stopped.
            if component != failed:
                self.observer(component, event, detail)

        if self.state is not None:
            stop_components(self.state, cleanup_observer)
        state_file.remove(self.paths.stack_file)

    def plan(self, *, nats_link: bool = False) -> None:
        """Checks the options, picks the services and resolves every port; starts nothing.

        `nats_link`: the NATS server will be one region of a supercluster, with listeners of its own
        for routes, gateways and monitoring.
        """
        self._check_external_options()
        self.specs, self.skipped = self._services()
        links = list(NATS_LINK_PORTS) if nats_link and not self.options.nats_url else []
        self.ports = self._resolve_ports([spec.name for spec in self.specs], links)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres, self.s3 = self._storage_servers(self.ports)
        except ValueError as exc:
            raise StackError(f"bad external server address: {exc}") from exc

    def start_servers(self, gateway: NatsGateway | None = None) -> None:
        """Starts (or attaches to) NATS, PostgreSQL and S3 and waits until they answer; `gateway`
        joins the NATS server to other regions."""
        options = self.options
        try:
            self.nats = self._nats_server(self.ports, gateway)
        except ValueError as exc:
            raise StackError(f"bad external server address: {exc}") from exc
        state = StackState(
            nats_url=self.nats.url,
            postgres_dsn=self.postgres.dsn,
            s3_endpoint=self.s3.endpoint,
            s3_access_key=options.s3_access_key or self.secrets.s3_access_key,
            s3_secret_key=options.s3_secret_key or self.secrets.s3_secret_key,
            s3_bucket=options.s3_bucket,
            region=options.region,
            detached=self.detach,
            supervisor_pid=None if self.detach else os.getpid(),
            supervisor_ticks=None if self.detach else start_ticks(os.getpid()),
        )
        self.state = state
        self._start_servers(state, {"nats": self.nats, "postgres": self.postgres, "s3": self.s3})
        try:
            self.s3.ensure_bucket(options.s3_bucket)
        except Exception as exc:
            raise StackError(f"s3: cannot create bucket {options.s3_bucket!r}: {exc}", component="s3") from exc

    def start_services(self, peers: Mapping[str, Mapping[str, int]] | None = None) -> UpResult:
        """Starts the services, waits until each is SERVING and records the stack; `peers`: the
        other regions' service ports, by region."""
        state = self.state
        assert state is not None, "start_servers() comes first"
        for name in self.skipped:
            self.observer(name, "skipped", f"console script {service(name).script} is not installed")
        self._start_services(state, self.specs, self.ports, peers or {})
        gateway = next((c for c in state.components if c.name == "gateway"), None)
        if gateway is not None:
            state.endpoint = gateway.address
            _write_client_config(self.paths, gateway.address, self.secrets.api_key)
        state_file.save(self.paths.stack_file, state)
        return UpResult(state, already_running=False, api_key=self.secrets.api_key, skipped=tuple(self.skipped))

    def _check_external_options(self) -> None:
        options = self.options
        s3 = (options.s3_endpoint, options.s3_access_key, options.s3_secret_key)
        if any(s3) and not all(s3):
            raise StackError("an external S3 needs --s3-endpoint, --s3-access-key and --s3-secret-key together")

    def _services(self) -> tuple[list[ServiceSpec], list[str]]:
        """The services to start, and the names of those skipped because they are not installed."""
        wanted = self.options.services
        if wanted is not None:
            unknown = set(wanted) - {spec.name for spec in SERVICES}
            if unknown:
                raise StackError(f"unknown services: {', '.join(sorted(unknown))}")
        chosen = [spec for spec in SERVICES if wanted is None or spec.name in wanted]
        available = [spec for spec in chosen if installed_script(spec) is not None]
        skipped = [spec.name for spec in chosen if spec not in available]
        return available, skipped

    def _resolve_ports(self, services: Sequence[str], links: Sequence[str]) -> dict[str, int]:
        options = self.options
        external = {"nats": options.nats_url, "postgres": options.postgres_dsn, "s3": options.s3_endpoint}
        extra = [name for spec in SERVICES if spec.name in services for name, _ in spec.extra_ports]
        names = [name for name in SERVER_PORTS if not external[name]] + list(links) + list(services) + extra
        unknown = set(options.ports) - set(default_ports())
        if unknown:
            raise StackError(f"--port names unknown components: {', '.join(sorted(unknown))}")
        ports: dict[str, int] = {}
        for name in names:
            requested = options.port(name)
            if requested == 0:
                ports[name] = free_port()
                continue
            if not 0 < requested < 65536:
                raise StackError(f"port {requested} for {name} is not a valid TCP port", component=name)
            clash = next((other for other, port in ports.items() if port == requested), None)
            if clash is not None:
                raise StackError(f"{name} and {clash} are both given port {requested}", component=name)
            if port_in_use(requested):
                raise StackError(
                    f"port {requested} for {name} is already in use on {LOOPBACK}; stop what listens "
                    f"there or pick another port with --port {name}=PORT",
                    component=name,
                )
            ports[name] = requested
        return ports

    def _nats_server(self, ports: Mapping[str, int], gateway: NatsGateway | None) -> NatsServer:
        options, paths = self.options, self.paths
        if options.nats_url:
            return NatsServer.attach(options.nats_url)
        return NatsServer(paths.nats, port=ports["nats"], log_path=paths.log("nats"), gateway=gateway)

    def _storage_servers(self, ports: Mapping[str, int]) -> tuple[PostgresServer, S3Server]:
        options, paths, secrets = self.options, self.paths, self.secrets
        postgres = (
            PostgresServer.attach(options.postgres_dsn)
            if options.postgres_dsn
            else PostgresServer(
                paths.postgres,
                port=ports["postgres"],
                password=secrets.postgres_password,
                durable=options.durable,
                log_path=paths.log("postgres"),
            )
        )
        s3 = (
            S3Server.attach(options.s3_endpoint, options.s3_access_key or "", options.s3_secret_key or "")
            if options.s3_endpoint
            else S3Server(
                paths.s3,
                access_key=secrets.s3_access_key,
                secret_key=secrets.s3_secret_key,
                port=ports["s3"],
                log_path=paths.log("s3"),
            )
        )
        return postgres, s3

    def _start_servers(self, state: StackState, servers: Mapping[str, ManagedServer]) -> None:
        for name, server in servers.items():
            self.observer(name, "starting", server.address if server.external else "")
            try:
                server.launch()
            except (OSError, ServerStartError) as exc:
                raise StackError(f"{name} could not be started: {exc}", component=name) from exc
            state.put(_server_component(name, server))
            state_file.save(self.paths.stack_file, state)
        deadline = time.monotonic() + self.options.startup_timeout_s
        waiting = dict(servers)
        while waiting:
            for name, server in list(waiting.items()):
                try:
                    ready = server.poll_ready()
                except ServerStartError as exc:
                    raise StackError(exc.reason, component=name, log_tail=exc.log_excerpt) from exc
                except RuntimeError as exc:
                    raise StackError(f"{name}: {exc}", component=name, log_tail=server.log_excerpt()) from exc
                if ready:
                    del waiting[name]
                    # The address is final only now (a free port is picked when the process starts).
                    state.put(_server_component(name, server))
                    self.observer(name, "ready", server.address)
            if waiting and time.monotonic() >= deadline:
                name, server = next(iter(waiting.items()))
                raise StackError(
                    f"{name} was not ready within {self.options.startup_timeout_s:.0f}s",
                    component=name,
                    log_tail=server.log_excerpt(),
                )
            time.sleep(0.05)
        state.components.sort(key=lambda c: list(SERVER_PORTS).index(c.name))
        state_file.save(self.paths.stack_file, state)

    def _start_services(
        self,
        state: StackState,
        specs: Sequence[ServiceSpec],
        ports: Mapping[str, int],
        peers: Mapping[str, Mapping[str, int]],
    ) -> None:
        context = self._context(state, ports, peers)
        offsets: dict[str, int] = {}
        for spec in specs:
            script = installed_script(spec)
            assert script is not None
            # HUTCH_* settings from the caller's environment are recorded with the stack's own, so
            # that `hutch local restart` starts a service with the settings it first had.
            env = {**_caller_settings(), **service_env(spec, context, ports[spec.name])}
            log = self.paths.log(spec.name)
            offsets[spec.name] = log_offset(log)
            self.observer(spec.name, "starting", "")
            handle = spawn([str(script)], log_path=log, env={**os.environ, **env})
            state.put(
                ComponentState(
                    name=spec.name,
                    kind="service",
                    address=f"{LOOPBACK}:{ports[spec.name]}",
                    pid=handle.pid,
                    ticks=handle.ticks,
                    log=str(log),
                    argv=[str(script)],
                    env=env,
                )
            )
            state_file.save(self.paths.stack_file, state)
        deadline = time.monotonic() + self.options.startup_timeout_s
        waiting = [spec.name for spec in specs]
        while waiting:
            for name in list(waiting):
                component = state.component(name)
                if _service_ready(component, offsets[name]):
                    waiting.remove(name)
                    self.observer(name, "ready", component.address)
            if waiting and time.monotonic() >= deadline:
                name = waiting[0]
                raise StackError(
                    f"{name} did not report SERVING on {state.component(name).address} within "
                    f"{self.options.startup_timeout_s:.0f}s",
                    component=name,
                    log_tail=log_tail(self.paths.log(name), since=offsets[name]),
                )
            time.sleep(0.1)

    def _context(
        self, state: StackState, ports: Mapping[str, int], peers: Mapping[str, Mapping[str, int]]
    ) -> ServiceContext:
        options = self.options
        return ServiceContext(
            paths=self.paths,
            secrets=self.secrets,
            nats_url=state.nats_url,
            postgres_dsn=state.postgres_dsn,
            s3_endpoint=state.s3_endpoint,
            s3_access_key=state.s3_access_key,
            s3_secret_key=state.s3_secret_key,
            s3_bucket=state.s3_bucket,
            region=options.region,
            log_level=options.log_level,
            node_id=options.node_id,
            node_root_dir=options.node_root_dir,
            node_cgroup_parent=options.node_cgroup_parent,
            sandbox_network=options.sandbox_network,
            templates_dir=options.templates_dir,
            ports={
                name: port for name, port in ports.items() if name not in SERVER_PORTS and name not in NATS_LINK_PORTS
            },
            peers=peers,
        )


def kill_new_children(before: set[int]) -> None:
    """SIGKILLs the children started since `before` was taken: an interrupt can land between starting
    a process and recording it in the state."""
    for handle in live_children():
        if handle.pid not in before:
            handle.kill()


def _server_component(name: str, server: ManagedServer) -> ComponentState:
    command = server.launched_command
    handle = server.process
    return ComponentState(
        name=name,
        kind="server",
        address=server.address,
        external=server.external,
        pid=None if handle is None else handle.pid,
        ticks=None if handle is None else handle.ticks,
        log=None if server.log_path is None or server.external else str(server.log_path),
        argv=[] if command is None else list(command.argv),
        env={} if command is None else dict(command.env),
        user=None if command is None else command.user,
    )


def _service_ready(component: ComponentState, since: int) -> bool:
    """True once a service answers SERVING; raises StackError if its process has exited."""
    handle = component.handle()
    assert handle is not None
    if not handle.alive():
        code = handle.returncode()
        raise StackError(
            f"{component.name} exited during startup (exit status {code})",
            component=component.name,
            log_tail=log_tail(Path(component.log), since=since) if component.log else "",
        )
    return grpc_serving(component.address)


def _write_client_config(paths: StackPaths, endpoint: str, api_key: str) -> None:
    """Points the SDK and CLI at the local gateway, keeping any other settings in config.json."""
    config = read_json(paths.config_file)
    merged = dict(config) if isinstance(config, dict) else {}
    merged.update(endpoint=endpoint, api_key=api_key)
    write_json_private(paths.config_file, merged)


def _caller_settings() -> dict[str, str]:
    """The HUTCH_* variables of the environment the stack is started from (HUTCH_HOME aside: the
    stack's own paths decide where it lives)."""
    return {k: v for k, v in os.environ.items() if k.startswith("HUTCH_") and k != "HUTCH_HOME"}
