"""Turns the SDK's Python arguments into request messages.

Only what a request message cannot carry is checked here (negative numbers, values too large for
their field); everything else, such as name syntax or resource limits, is the gateway's to judge,
so the rules live in one place.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from hutch.exceptions import InvalidArgumentError
from hutch.models import SandboxState
from hutch.v1 import process_pb2, sandbox_pb2

_UINT32_MAX: Final = 2**32 - 1


def cpu_millis(cpu: float) -> int:
    """Converts vCPUs (e.g. 0.5) to thousandths of a vCPU.

    Raises:
        InvalidArgumentError: cpu is not a positive number that fits the request.
    """
    if not isinstance(cpu, int | float) or not math.isfinite(cpu) or cpu <= 0:
        raise InvalidArgumentError(f"cpu must be a positive number of vCPUs, e.g. 0.5 or 2, not {cpu!r}")
    millis = round(cpu * 1000)
    if not 1 <= millis <= _UINT32_MAX:
        raise InvalidArgumentError(f"cpu must be between 0.001 and {_UINT32_MAX // 1000} vCPUs, not {cpu!r}")
    return millis


def memory_mb(value: int) -> int:
    """Checks a memory size in MiB.

    Raises:
        InvalidArgumentError: value is not a positive integer that fits the request.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _UINT32_MAX:
        raise InvalidArgumentError(f"memory_mb must be a positive whole number of MiB, not {value!r}")
    return value


def lifetime_seconds(timeout: float | None) -> int:
    """Converts a sandbox lifetime in seconds (None or 0: until killed) to the request's field.

    Fractions of a second round up, so a sandbox never lives shorter than asked.

    Raises:
        InvalidArgumentError: timeout is negative or too large.
    """
    if not timeout:
        return 0
    if timeout < 0 or not math.isfinite(timeout) or math.ceil(timeout) > _UINT32_MAX:
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds, or None to live until killed, not {timeout!r}"
        )
    return math.ceil(timeout)


def timeout_ms(timeout: float | None) -> int:
    """Converts a command timeout in seconds (None or 0: no limit) to milliseconds.

    Raises:
        InvalidArgumentError: timeout is negative or too large.
    """
    if not timeout:
        return 0
    millis = max(1, round(timeout * 1000)) if math.isfinite(timeout) else -1
    if timeout < 0 or not 0 < millis <= _UINT32_MAX:
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds, or None for no limit, not {timeout!r}"
        )
    return millis


def sandbox_states(states: Iterable[SandboxState | str] | None) -> list[SandboxState]:
    """Converts state names such as "running" to `SandboxState` values.

    Raises:
        InvalidArgumentError: A name is not a sandbox state.
    """
    result: list[SandboxState] = []
    for state in states or ():
        try:
            result.append(SandboxState(state))
        except ValueError:
            known = ", ".join(s.value for s in SandboxState if s is not SandboxState.UNSPECIFIED)
            raise InvalidArgumentError(f"unknown sandbox state {state!r}; use one of {known}") from None
    return result


def create_request(
    *,
    template: str,
    cpu: float,
    memory: int,
    name: str | None,
    metadata: Mapping[str, str] | None,
    envs: Mapping[str, str] | None,
    timeout: float | None,
    isolation: str = "auto",
    trust: str | None = None,
) -> sandbox_pb2.CreateSandboxRequest:
    """Builds the request `Sandbox.create` sends; see there for the arguments."""
    return sandbox_pb2.CreateSandboxRequest(
        template=template,
        name=name or "",
        resources=sandbox_pb2.Resources(cpu_millis=cpu_millis(cpu), memory_mb=memory_mb(memory)),
        metadata=dict(metadata or {}),
        envs=dict(envs or {}),
        timeout_seconds=lifetime_seconds(timeout),
        isolation=isolation,
        trust=trust or "",
    )


def describe_command(cmd: str | Sequence[str]) -> str:
    """Renders a command for messages: a shell line as given, an argv quoted as a shell would need."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def process_config(
    sandbox: str,
    cmd: str | Sequence[str],
    *,
    envs: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    stdin: bool = False,
) -> process_pb2.ProcessConfig:
    """Builds the ProcessConfig that starts a command.

    Args:
        sandbox: The sandbox's id or name.
        cmd: A shell command line (str), or an argv run without a shell (a sequence of str).
        envs: Extra environment variables.
        cwd: Working directory; the user's home when None.
        user: User name or numeric uid; root when None.
        timeout: Seconds before the command is killed; None or 0 for no limit.
        stdin: Whether the caller will send stdin; without it the command reads /dev/null.

    Raises:
        InvalidArgumentError: cmd is empty, or timeout is out of range.
    """
    config = process_pb2.ProcessConfig(
        sandbox=sandbox,
        envs=dict(envs or {}),
        cwd=cwd or "",
        user=user or "",
        timeout_ms=timeout_ms(timeout),
        stdin=stdin,
    )
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidArgumentError("the command is empty")
        config.cmd = cmd
    else:
        if not cmd:
            raise InvalidArgumentError("the command's argv is empty")
        config.args.extend(cmd)
    return config
