"""Keeps the node's egress-proxy told which sandbox holds which address, under which policy.

Every sandbox is registered (id, tenant, name, labels, address, policy) before its start is
reported, re-registered when its policy changes and unregistered when it stops. Once a second the
registrar asks the proxy for its epoch; a proxy that restarted (new epoch), or one that could not
be reached, gets the whole set again. Until then the proxy knows no sandbox and refuses everything,
so a proxy restart never opens anything up.

Policy changes made after a sandbox started are kept in `<root>/network/egress-policies.json`, so a
restarted node-agent registers each sandbox with its latest policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from hutch.core import errors
from hutch.core.grpc_runtime import error_from_rpc, internal_metadata
from hutch.internal.v1 import egress_proxy_pb2 as pb
from hutch.internal.v1 import egress_proxy_pb2_grpc
from hutch.v1 import network_pb2
from hutch_node_agent.domain import LocalSandbox
from hutch_node_agent.network import SandboxNetworks
from hutch_node_agent.settings import NodeOptions

if TYPE_CHECKING:
    from hutch.internal.v1.egress_proxy_pb2_grpc import EgressProxyAsyncStub

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 3.0
POLICY_KEYS = ("allow", "deny", "passthrough")

Policy = dict[str, list[str]]
# The address of a sandbox's end of its link, or None when it has no network.
AddressOf = Callable[[str], str | None]


def policy_message(policy: Mapping[str, Sequence[str]]) -> network_pb2.NetworkPolicy:
    return network_pb2.NetworkPolicy(**{key: list(policy.get(key, ())) for key in POLICY_KEYS})


def policy_from(message: network_pb2.NetworkPolicy) -> Policy:
    return {key: list(getattr(message, key)) for key in POLICY_KEYS}


class EgressRegistrar:
    def __init__(
        self,
        node_id: str,
        api: str,
        internal_token: str,
        state_file: Path,
        sandboxes: Callable[[], Iterable[LocalSandbox]],
        address_of: AddressOf,
    ) -> None:
        self._node_id = node_id
        self._api = api
        self._token = internal_token
        self._state_file = state_file
        self._sandboxes = sandboxes
        self._address_of = address_of
        self._channel: grpc.aio.Channel | None = None
        self._synced_epoch: str | None = None
        self._overrides: dict[str, Policy] = self._load()

    # -- what the node-agent calls ---------------------------------------------------------

    def policy(self, sandbox: LocalSandbox) -> Policy:
        """The sandbox's current policy: the latest change, else what it was created with."""
        return self._overrides.get(sandbox.id) or {k: list(sandbox.request.network.get(k, ())) for k in POLICY_KEYS}

    async def started(self, sandbox: LocalSandbox) -> None:
        await self._call_register(sandbox)

    async def update(self, sandbox: LocalSandbox, policy: Policy) -> None:
        self._overrides[sandbox.id] = {k: list(policy.get(k, ())) for k in POLICY_KEYS}
        self._save()
        await self._call_register(sandbox)

    async def stopped(self, sandbox_id: str) -> None:
        if self._overrides.pop(sandbox_id, None) is not None:
            self._save()
        try:
            await self._stub().Unregister(
                pb.UnregisterSandboxRequest(sandbox_id=sandbox_id), metadata=self._metadata(), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            self._synced_epoch = None  # the next sync drops it anyway
            log.warning("could not unregister %s from the egress-proxy: %s", sandbox_id, _why(exc))

    async def run(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Re-registers everything whenever the proxy's epoch is not the one last synced."""
        while not stop.is_set():
            try:
                status = await self._stub().Status(
                    pb.EgressProxyStatusRequest(), metadata=self._metadata(), timeout=CALL_TIMEOUT_S
                )
                if status.epoch != self._synced_epoch:
                    await self.sync()
            except grpc.RpcError as exc:
                if self._synced_epoch is not None:
                    log.warning("the egress-proxy at %s is not answering: %s", self._api, _why(exc))
                self._synced_epoch = None
            except errors.HutchError as exc:
                log.warning("egress registration: %s", exc.message)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass

    async def sync(self) -> None:
        live = [s for s in self._sandboxes() if s.status in ("starting", "running")]
        registrations = [r for r in (self._registration(s) for s in live) if r is not None]
        answer = await self._stub().Sync(
            pb.SyncSandboxesRequest(node_id=self._node_id, sandboxes=registrations),
            metadata=self._metadata(),
            timeout=CALL_TIMEOUT_S,
        )
        if self._synced_epoch != answer.epoch:
            log.info("registered %d sandboxes with the egress-proxy (epoch %s)", len(registrations), answer.epoch)
        self._synced_epoch = answer.epoch
        known = {s.id for s in live}
        stale = [sandbox_id for sandbox_id in self._overrides if sandbox_id not in known]
        for sandbox_id in stale:
            del self._overrides[sandbox_id]
        if stale:
            self._save()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    # -- helpers ---------------------------------------------------------------------------

    async def _call_register(self, sandbox: LocalSandbox) -> None:
        registration = self._registration(sandbox)
        if registration is None:
            return
        try:
            answer = await self._stub().Register(
                pb.RegisterSandboxRequest(sandbox=registration), metadata=self._metadata(), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, "the egress-proxy")
            if isinstance(error, errors.InvalidArgument):
                raise error from None
            # No egress until the proxy is back; the sync loop registers it then.
            self._synced_epoch = None
            log.warning("could not register %s with the egress-proxy: %s", sandbox.id, error.message)
            return
        if answer.epoch != self._synced_epoch:
            self._synced_epoch = None  # the proxy restarted meanwhile: everything goes again

    def _registration(self, sandbox: LocalSandbox) -> pb.SandboxRegistration | None:
        address = self._address_of(sandbox.id)
        if address is None:
            return None
        request = sandbox.request
        return pb.SandboxRegistration(
            sandbox_id=sandbox.id,
            tenant_id=request.tenant_id,
            name=request.name,
            labels=dict(request.metadata),
            address=address,
            policy=policy_message(self.policy(sandbox)),
            node_id=self._node_id,
        )

    def _stub(self) -> EgressProxyAsyncStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._api)
        return egress_proxy_pb2_grpc.EgressProxyStub(self._channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return internal_metadata(self._token)

    def _load(self) -> dict[str, Policy]:
        try:
            data = json.loads(self._state_file.read_text())
            return {str(k): {key: [str(x) for x in v.get(key, [])] for key in POLICY_KEYS} for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring %s: %s", self._state_file, exc)
            return {}

    def _save(self) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._overrides))
        tmp.replace(self._state_file)


def _why(exc: grpc.RpcError) -> str:
    return error_from_rpc(exc, "the egress-proxy").message


def for_node(
    options: NodeOptions,
    internal_token: str,
    sandboxes: Callable[[], Iterable[LocalSandbox]],
    networks: SandboxNetworks,
) -> EgressRegistrar | None:
    """The node's registrar, or None when it has no egress-proxy."""
    if options.egress_proxy is None:
        return None

    def address_of(sandbox_id: str) -> str | None:
        network = networks.get(sandbox_id)
        return str(network.sandbox_ip) if network is not None else None

    state = options.root_dir / "network" / "egress-policies.json"
    return EgressRegistrar(options.id, options.egress_proxy.api, internal_token, state, sandboxes, address_of)
