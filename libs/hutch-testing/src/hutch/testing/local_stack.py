"""The whole platform for end-to-end tests: `hutch.local.stack` in a private home on free ports."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hutch.local import stack
from hutch.local.services import SERVICES, installed_script
from hutch.local.stack import ComponentStatus, StackError, StackOptions
from hutch.local.state import StackState

# The SDK and CLI prefer these variables over $HUTCH_HOME/config.json; tests against the stack must
# not pick up a developer's own settings.
_CLIENT_OVERRIDES = ("HUTCH_API_KEY", "HUTCH_ENDPOINT")


def missing_services() -> list[str]:
    """Console scripts of the stack's services that are not installed (yet)."""
    return [spec.script for spec in SERVICES if installed_script(spec) is None]


@dataclass
class LocalStack:
    """A running local stack.

    Attributes:
        home: its HUTCH_HOME (config.json, local/ with data, logs and stack.json).
        endpoint: the gateway's host:port.
        api_key: the dev tenant's API key.
        internal_token: the secret the services authenticate each other with.
        postgres_dsn, nats_url, s3_endpoint: the servers the services use.
        region: the region its services run as.
    """

    home: Path
    endpoint: str
    api_key: str
    internal_token: str
    postgres_dsn: str
    nats_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    region: str = "local"

    @classmethod
    def start(cls, home: Path, *, startup_timeout_s: float = 180.0) -> LocalStack:
        """Starts a detached stack in `home` with every port picked free, and waits until healthy."""
        ports = dict.fromkeys(stack.default_ports(), 0)
        templates = os.environ.get("HUTCH_NODE__TEMPLATES_DIR")
        options = StackOptions(
            home=home,
            ports=ports,
            durable=False,
            startup_timeout_s=startup_timeout_s,
            templates_dir=Path(templates) if templates else stack.DEFAULT_TEMPLATES_DIR,
        )
        try:
            result = stack.up(options, detach=True)
        except StackError as exc:
            # Test reports show the message only; the component's log is what explains a failure.
            raise StackError(f"{exc}\n{exc.log_tail}", component=exc.component) from exc
        return cls.from_state(home, result.state, result.api_key)

    @classmethod
    def from_state(cls, home: Path, state: StackState, api_key: str) -> LocalStack:
        """The stack recorded in `state`, running in `home`."""
        if state.endpoint is None:
            raise StackError("the stack started without a gateway")
        gateway = state.component("gateway")
        return cls(
            home=home,
            endpoint=state.endpoint,
            api_key=api_key,
            internal_token=gateway.env["HUTCH_INTERNAL_TOKEN"],
            postgres_dsn=state.postgres_dsn,
            nats_url=state.nats_url,
            s3_endpoint=state.s3_endpoint,
            s3_access_key=state.s3_access_key,
            s3_secret_key=state.s3_secret_key,
            s3_bucket=state.s3_bucket,
            region=state.region,
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment for running the `hutch` CLI (or an SDK program) against this stack."""
        env = {key: value for key, value in os.environ.items() if key not in _CLIENT_OVERRIDES}
        env["HUTCH_HOME"] = str(self.home)
        return env

    def service_env(self, name: str) -> dict[str, str]:
        """The full environment service `name` runs with (HUTCH_* settings included)."""
        return {**os.environ, **self._state().component(name).env}

    def admin(self, *args: str) -> str:
        """Runs `hutch-gateway admin ARGS...` against this stack; returns what it printed."""
        script = installed_script(next(spec for spec in SERVICES if spec.name == "gateway"))
        if script is None:
            raise StackError("hutch-gateway is not installed")
        result = subprocess.run(
            [str(script), "admin", *args],
            env=self.service_env("gateway"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"admin {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def create_tenant(self, name: str) -> str:
        """Creates tenant `name` with a new API key (`hutch-gateway admin create-tenant`); returns it."""
        lines = [line.strip() for line in self.admin("create-tenant", name).splitlines() if line.strip()]
        if not lines:
            raise StackError(f"create-tenant {name} printed no API key")
        return lines[-1]

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """SIGTERMs component `name`, starts it again with the same settings, waits until healthy."""
        stack.restart(self.home, name, timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILLs component `name` (it stays down until `restart`)."""
        stack.kill(self.home, name)

    def pid(self, name: str) -> int | None:
        """The current pid of component `name`."""
        return self._state().component(name).pid

    def status(self) -> list[ComponentStatus]:
        """Every component with its health."""
        return stack.status(self.home) or []

    def log(self, name: str) -> Path:
        """The log file of component `name`."""
        log = self._state().component(name).log
        if log is None:
            raise StackError(f"{name} has no log here")
        return Path(log)

    def stop(self) -> None:
        """Stops everything (`hutch local down`)."""
        stack.down(self.home)

    def _state(self) -> StackState:
        state = stack.read_state(self.home)
        if state is None:
            raise StackError(f"no stack is running in {self.home}")
        return state
