"""Where the gateway is and which API key to use.

Each setting comes from the first place that has it: the argument given in code, then the
environment (HUTCH_API_KEY, HUTCH_ENDPOINT), then the config file `hutch local up` writes,
`$HUTCH_HOME/config.json` (HUTCH_HOME defaults to ~/.hutch). The endpoint falls back to the local
stack's default address; the API key has no default.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from hutch.exceptions import AuthenticationError, HutchError, InvalidArgumentError

DEFAULT_ENDPOINT: Final = "127.0.0.1:50051"
# The gateway's port when an endpoint names a plain-text host without one.
_DEFAULT_PORT: Final = 50051
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class ConnectionConfig:
    """Everything needed to open a channel to the gateway.

    Attributes:
        api_key: Sent as `authorization: Bearer <key>` with every call.
        endpoint: The endpoint as the user gave it, for messages.
        target: The gRPC target, "host:port" or "unix:path".
        secure: Whether the channel uses TLS.
        request_timeout: Deadline in seconds for each unary call, or None for none.
    """

    api_key: str = field(repr=False)
    endpoint: str
    target: str
    secure: bool
    request_timeout: float | None = None


def config_path(environ: Mapping[str, str]) -> Path:
    """Returns the config file's path: `$HUTCH_HOME/config.json`, HUTCH_HOME defaulting to ~/.hutch."""
    home = environ.get("HUTCH_HOME") or str(Path.home() / ".hutch")
    return Path(home).expanduser() / "config.json"


def _read_config_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise HutchError(f"cannot read the Hutch config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HutchError(
            f"the Hutch config file {path} is not valid JSON ({exc}); fix it, or delete it and run "
            "`hutch local up` again"
        ) from exc
    if not isinstance(data, dict):
        raise HutchError(f"the Hutch config file {path} must hold a JSON object")
    return {key: value for key, value in data.items() if isinstance(value, str) and value}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoint(endpoint: str, *, insecure: bool = False) -> tuple[str, bool]:
    """Turns an endpoint into a gRPC target and whether to use TLS.

    Accepted forms are "host:port", "http://host:port", "https://host:port" and "unix:path".
    `https://` and hosts other than loopback use TLS; `http://`, loopback hosts and unix sockets use
    plain text, as does everything when `insecure` is set. A missing port is 443 for TLS, 80 for
    `http://` and 50051 otherwise.

    Args:
        endpoint: The endpoint as configured.
        insecure: Force plain text (HUTCH_INSECURE=1).

    Returns:
        (target, secure).

    Raises:
        InvalidArgumentError: The endpoint cannot be parsed.
    """
    text = endpoint.strip()
    if text.startswith("unix:"):
        return text, False
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    elif scheme not in ("http", "https"):
        raise InvalidArgumentError(
            f"endpoint {endpoint!r} has scheme {scheme!r}: use host:port, http://host:port or https://host:port"
        )
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"endpoint {endpoint!r} has an invalid port") from exc
    host = parts.hostname
    if not host or parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise InvalidArgumentError(f"endpoint {endpoint!r} is not host:port, http://host:port or https://host:port")
    secure = not insecure and (scheme == "https" or (not scheme and not _is_loopback(host)))
    if port is None:
        port = {"https": 443, "http": 80}.get(scheme, 443 if secure else _DEFAULT_PORT)
    target_host = f"[{host}]" if ":" in host else host
    return f"{target_host}:{port}", secure


def resolve(
    api_key: str | None = None,
    endpoint: str | None = None,
    request_timeout: float | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ConnectionConfig:
    """Resolves the connection settings from arguments, the environment and the config file.

    Args:
        api_key: Overrides HUTCH_API_KEY and the config file.
        endpoint: Overrides HUTCH_ENDPOINT and the config file.
        request_timeout: Deadline in seconds for each unary call, or None for none.
        environ: The environment to read; `os.environ` when None.

    Returns:
        The resolved settings.

    Raises:
        AuthenticationError: No API key is configured anywhere.
        InvalidArgumentError: The endpoint cannot be parsed, or request_timeout is not positive.
        HutchError: The config file exists but cannot be read.
    """
    env = os.environ if environ is None else environ
    if request_timeout is not None and request_timeout <= 0:
        raise InvalidArgumentError(f"request_timeout must be positive seconds or None, not {request_timeout}")
    key = api_key or env.get("HUTCH_API_KEY") or None
    where = endpoint or env.get("HUTCH_ENDPOINT") or None
    path = config_path(env)
    if key is None or where is None:
        from_file = _read_config_file(path)
        key = key or from_file.get("api_key")
        where = where or from_file.get("endpoint")
    if not key:
        raise AuthenticationError(
            f"no Hutch API key: run `hutch local up` to start a local stack (it saves a key in {path}), "
            "or set HUTCH_API_KEY"
        )
    where = where or DEFAULT_ENDPOINT
    insecure = env.get("HUTCH_INSECURE", "").strip().lower() in _TRUE
    target, secure = parse_endpoint(where, insecure=insecure)
    return ConnectionConfig(api_key=key, endpoint=where, target=target, secure=secure, request_timeout=request_timeout)
