"""Turns the SDK's Python arguments into request messages.

Only what a request message cannot carry is checked here (negative numbers, values too large for
their field); everything else, such as name syntax or resource limits, is the gateway's to judge,
so the rules live in one place.
"""

from __future__ import annotations

import math
import shlex
import signal as signals
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from hutch.exceptions import InvalidArgumentError
from hutch.models import SandboxState
from hutch.v1 import process_pb2, sandbox_pb2

_UINT32_MAX: Final = 2**32 - 1
# What the gateway accepts for a terminal's columns and rows.
_TERMINAL_MAX: Final = 1000


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


# `memory_mb="auto"`: the sandbox starts with this much and grows as it needs, up to its ceiling.
AUTO_MEMORY_START_MB = 256
AUTO_MEMORY_CEILING_MB = 4096


def memory_request(memory: int | str | None, ceiling: int | None) -> tuple[int, int]:
    """(memory_mb, memory_ceiling_mb) for a create request; 0 leaves a value to the gateway.

    Raises:
        InvalidArgumentError: memory is neither a size in MiB nor "auto", or the ceiling is not a size.
    """
    if memory == "auto":
        return AUTO_MEMORY_START_MB, memory_mb(ceiling) if ceiling is not None else AUTO_MEMORY_CEILING_MB
    if isinstance(memory, str):
        raise InvalidArgumentError(f'memory_mb must be a whole number of MiB or "auto", not {memory!r}')
    return (0 if memory is None else memory_mb(memory)), (0 if ceiling is None else memory_mb(ceiling))


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
    template: str | None,
    cpu: float | None,
    memory: int | str | None,
    name: str | None,
    metadata: Mapping[str, str] | None,
    envs: Mapping[str, str] | None,
    timeout: float | None,
    isolation: str = "auto",
    trust: str | None = None,
    snapshot: str | None = None,
    auto_sleep_after: float | None = None,
    memory_ceiling: int | None = None,
    region: str | None = None,
) -> sandbox_pb2.CreateSandboxRequest:
    """Builds the request `Sandbox.create` sends; see there for the arguments.

    None (empty or 0 in the request) leaves a value to the gateway: its default, or the snapshot's.
    """
    memory_start, ceiling = memory_request(memory, memory_ceiling)
    return sandbox_pb2.CreateSandboxRequest(
        template=template or "",
        name=name or "",
        resources=sandbox_pb2.Resources(cpu_millis=0 if cpu is None else cpu_millis(cpu), memory_mb=memory_start),
        memory_ceiling_mb=ceiling,
        metadata=dict(metadata or {}),
        envs=dict(envs or {}),
        timeout_seconds=lifetime_seconds(timeout),
        isolation=isolation,
        trust=trust or "",
        snapshot=snapshot or "",
        auto_sleep_after_seconds=idle_seconds(auto_sleep_after),
        region=region or "",
    )


def idle_seconds(seconds: float | None) -> int:
    """Converts an idle policy in seconds (None or 0: never sleep) to the request's field.

    Raises:
        InvalidArgumentError: seconds is negative or not finite.
    """
    if not seconds:
        return 0
    if seconds < 0 or not math.isfinite(seconds) or math.ceil(seconds) > _UINT32_MAX:
        raise InvalidArgumentError(
            f"auto_sleep_after must be a positive number of seconds, or None to never sleep, not {seconds!r}"
        )
    return math.ceil(seconds)


def describe_command(cmd: str | Sequence[str]) -> str:
    """Renders a command for messages: a shell line as given, an argv quoted as a shell would need."""
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def terminal_size(cols: int, rows: int) -> process_pb2.TerminalSize:
    """Checks a terminal's size in character cells.

    Raises:
        InvalidArgumentError: cols or rows is not a whole number from 1 to 1000.
    """
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _TERMINAL_MAX:
            raise InvalidArgumentError(f"{name} must be a whole number from 1 to {_TERMINAL_MAX}, not {value!r}")
    return process_pb2.TerminalSize(cols=cols, rows=rows)


def port_number(port: int) -> int:
    """Checks a TCP port number.

    Raises:
        InvalidArgumentError: port is not a whole number from 1 to 65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"port must be a whole number from 1 to 65535, not {port!r}")
    return port


def signal_number(signal: int | str) -> int:
    """Converts a signal given as a number, a `signal.Signals` member or a name ("TERM", "SIGTERM").

    Raises:
        InvalidArgumentError: It names no signal, or the number is out of range.
    """
    if isinstance(signal, str):
        text = signal.strip().upper()
        if text.isdigit():
            return signal_number(int(text))
        name = text if text.startswith("SIG") else f"SIG{text}"
        member = getattr(signals.Signals, name, None) if name.isidentifier() else None
        if not isinstance(member, signals.Signals):
            raise InvalidArgumentError(f"unknown signal {signal!r}; use a number or a name such as TERM or KILL")
        return int(member)
    if isinstance(signal, bool) or not isinstance(signal, int) or not 1 <= signal <= 64:
        raise InvalidArgumentError(f"a signal number must be from 1 to 64, not {signal!r}")
    return int(signal)


def process_config(
    sandbox: str,
    cmd: str | Sequence[str],
    *,
    envs: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    stdin: bool = False,
    background: bool = False,
    pty: process_pb2.TerminalSize | None = None,
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
        background: Whether the process outlives the call that starts it.
        pty: Runs it in a terminal of this size (always in the background).

    Raises:
        InvalidArgumentError: cmd is empty, or timeout is out of range.
    """
    config = process_pb2.ProcessConfig(
        sandbox=sandbox,
        envs=dict(envs or {}),
        cwd=cwd or "",
        user=user or "",
        timeout_ms=timeout_ms(timeout),
        stdin=stdin or pty is not None,
        background=background or pty is not None,
    )
    if pty is not None:
        config.pty.CopyFrom(pty)
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidArgumentError("the command is empty")
        config.cmd = cmd
    else:
        if not cmd:
            raise InvalidArgumentError("the command's argv is empty")
        config.args.extend(cmd)
    return config
