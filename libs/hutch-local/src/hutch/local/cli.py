"""`hutch local up|status|down`: the command-line face of `hutch.local.stack`.

The main `hutch` command mounts `app` as `hutch local`; `python -m hutch.local` runs it directly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table

from hutch.local import stack
from hutch.local.paths import StackPaths, default_home
from hutch.local.rates import request_rates
from hutch.local.stack import ComponentStatus, Event, StackError, StackOptions, UpResult
from hutch.local.state import StackState

EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3

app = typer.Typer(
    name="local",
    help="Run the whole Hutch platform on this machine: NATS, PostgreSQL, S3 and the services.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="HUTCH_HOME", help="State directory (default: ~/.hutch)."),
]


class _ProgressObserver:
    """Shows one spinner line per component while the stack starts or stops.

    The display starts with the first event, so a command with nothing to report prints nothing.
    """

    def __init__(self) -> None:
        self.progress = Progress(SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), console=console)
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, component: str, event: Event, detail: str = "") -> None:
        label = f"[bold]{component:<16}[/]"
        text = {
            "starting": f"{label} starting {detail}",
            "ready": f"{label} [green]ready[/] {detail}",
            "skipped": f"{label} [yellow]skipped[/]: {detail}",
            "failed": f"{label} [red]failed[/]",
            "stopping": f"{label} stopping",
            "stopped": f"{label} [dim]stopped[/]",
            "exited": f"{label} [red]exited[/]: {detail}",
        }[event]
        if not self.tasks:
            self.progress.start()
        task = self.tasks.get(component)
        if task is None:
            task = self.progress.add_task(text, total=1)
            self.tasks[component] = task
        in_progress = event in ("starting", "stopping")
        self.progress.update(task, description=text, completed=0 if in_progress else 1)

    def close(self) -> None:
        """Leaves the final state of every line on screen."""
        if self.tasks:
            self.progress.stop()


@contextmanager
def _observer() -> Iterator[_ProgressObserver]:
    observer = _ProgressObserver()
    try:
        yield observer
    finally:
        observer.close()


def _parse_ports(values: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for value in values:
        for item in value.split(","):
            name, sep, number = item.strip().partition("=")
            if not sep or not number.strip().isdigit():
                raise typer.BadParameter(f"expected COMPONENT=PORT, got {item!r}", param_hint="--port")
            ports[name.strip()] = int(number)
    return ports


def _print_failure(exc: StackError) -> None:
    errors.print(f"[red]error:[/] {exc}")
    if exc.log_tail:
        errors.print(Panel(exc.log_tail, title=f"{exc.component} log", title_align="left", border_style="red"))


def _print_summary(results: list[UpResult], home: Path, detached: bool) -> None:
    paths = StackPaths(home)
    first = results[0]
    if first.already_running:
        console.print(f"The local stack in {paths.local} is already running.")
    several = len(results) > 1
    table = Table.grid(padding=(0, 2))
    for result in results:
        state = result.state
        if several:
            table.add_row(f"[bold]region {state.region}[/]", "")
        if state.endpoint:
            table.add_row("endpoint", state.endpoint)
        if result is first:
            table.add_row("API key", result.api_key)
        table.add_row("NATS", state.nats_url)
        table.add_row("PostgreSQL", state.postgres_dsn.split("@")[-1])
        table.add_row("S3", state.s3_endpoint + (f" (bucket {state.s3_bucket})" if several else ""))
        table.add_row("logs", str(_logs_of(state, paths)))
    console.print(table)
    if detached and not first.already_running:
        console.print("Stop it with [bold]hutch local down[/].")


def _logs_of(state: StackState, paths: StackPaths) -> Path:
    """The logs folder of a region (the folder of one of its components' logs)."""
    logged = next((c.log for c in state.components if c.log), None)
    return Path(logged).parent if logged else paths.logs


class _StopRequests:
    """SIGINT, SIGTERM and SIGHUP: while the stack starts they interrupt the start (KeyboardInterrupt,
    so what was started is stopped again); once it runs in the foreground they ask for an orderly
    shutdown. One handler for both phases leaves no moment in which a signal is lost or kills the
    command without cleanup."""

    def __init__(self) -> None:
        self.shutdown = threading.Event()
        self.running = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            raise KeyboardInterrupt
        self.shutdown.set()


@app.command()
def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once healthy; leave it running.")] = False,
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port",
            "-p",
            envvar="HUTCH_LOCAL_PORTS",
            help="COMPONENT=PORT, repeatable (0: any free port). Components: "
            + ", ".join(f"{name} ({number})" for name, number in stack.default_ports().items()),
        ),
    ] = None,
    nats_url: Annotated[str | None, typer.Option(help="Use this NATS server instead of starting one.")] = None,
    postgres_dsn: Annotated[
        str | None, typer.Option(help="Use this PostgreSQL database instead of starting a server.")
    ] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="Use this S3 (HOST:PORT) instead of starting one.")] = None,
    s3_access_key: Annotated[str | None, typer.Option(help="Access key of --s3-endpoint.")] = None,
    s3_secret_key: Annotated[str | None, typer.Option(help="Secret key of --s3-endpoint.")] = None,
    s3_bucket: Annotated[str, typer.Option(help="Bucket the services store data in.")] = "hutch",
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Start only this service (repeatable).")
    ] = None,
    no_services: Annotated[bool, typer.Option("--no-services", help="Start NATS, PostgreSQL and S3 only.")] = False,
    region: Annotated[str, typer.Option(envvar="HUTCH_REGION", help="Region the services run as.")] = "local",
    log_level: Annotated[str, typer.Option(envvar="HUTCH_LOG_LEVEL", help="Log level of the services.")] = "INFO",
    node_root_dir: Annotated[
        Path | None,
        typer.Option(envvar="HUTCH_NODE__ROOT_DIR", help="Node-agent data (default: HOME/local/node-1)."),
    ] = None,
    templates_dir: Annotated[
        Path, typer.Option(envvar="HUTCH_NODE__TEMPLATES_DIR", help="Root filesystem templates of the node-agent.")
    ] = stack.DEFAULT_TEMPLATES_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each phase to become healthy.")] = 120.0,
    regions: Annotated[
        int,
        typer.Option(
            "--regions",
            min=1,
            help="Run this many regions, joined as a NATS supercluster: the second is REGION-2, with its "
            "own NATS, services and node on ports 100 up, and its own database and bucket.",
        ),
    ] = 1,
    home: HomeOption = None,
) -> None:
    """Start the local stack and wait until every component is healthy."""
    home = home or default_home()
    options = StackOptions(
        home=home,
        ports=_parse_ports(port or []),
        nats_url=nats_url,
        postgres_dsn=postgres_dsn,
        s3_endpoint=s3_endpoint,
        s3_access_key=s3_access_key,
        s3_secret_key=s3_secret_key,
        s3_bucket=s3_bucket,
        region=region,
        log_level=log_level,
        node_root_dir=node_root_dir,
        templates_dir=templates_dir,
        startup_timeout_s=timeout,
        services=[] if no_services else service,
    )
    requests = _StopRequests()
    try:
        with _observer() as observer:
            results = stack.up_regions(options, regions, observer, detach=detach)
            requests.running = True
    except StackError as exc:
        _print_failure(exc)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        errors.print("interrupted; everything started has been stopped")
        raise typer.Exit(130) from None
    _print_summary(results, home, detach)
    if detach or results[0].already_running:
        return
    console.print("Running in the foreground; press Ctrl-C to stop.")
    with _observer() as observer:
        stack.supervise(home, requests.shutdown, observer)


@app.command()
def status(home: HomeOption = None) -> None:
    """Show every component (of every region), whether it is healthy (exit 1 if any is not, 3 if none
    runs) and, for services, the calls per second they answered lately (from `local/logs/metrics.jsonl`)."""
    home = home or default_home()
    regions = stack.regions_status(home)
    if regions is None:
        console.print(f"No local stack is running in {StackPaths(home).local}.")
        raise typer.Exit(EXIT_NOT_RUNNING)
    for region in regions:
        if len(regions) > 1:
            console.print(f"[bold]region {region.region}[/]")
        console.print(_status_table(region.components, StackPaths(region.home).metrics_file))
    if any(row.state != "healthy" for region in regions for row in region.components):
        raise typer.Exit(EXIT_UNHEALTHY)


def _status_table(rows: list[ComponentStatus], metrics_file: Path) -> Table:
    rates = request_rates(metrics_file)
    table = Table("component", "pid", "address", "state", "req/s")
    colours = {"healthy": "green", "unhealthy": "red", "stopped": "yellow"}
    for row in rows:
        pid = "external" if row.external else str(row.pid or "-")
        rate = f"{rates[row.name]:.1f}" if row.name in rates else "-"
        table.add_row(row.name, pid, row.address, f"[{colours[row.state]}]{row.state}[/]", rate)
    return table


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds each component gets to stop before SIGKILL.")] = 10.0,
    home: HomeOption = None,
) -> None:
    """Stop the local stack (services first, then servers). Data is kept."""
    home = home or default_home()
    with _observer() as observer:
        stopped = stack.down(home, observer, timeout=timeout)
    if not stopped:
        console.print(f"No local stack is running in {StackPaths(home).local}.")
        return
    console.print("The local stack is stopped; its data is kept in " + str(StackPaths(home).local))


def main() -> None:
    """Entry point of `python -m hutch.local`."""
    app(prog_name="hutch local")
