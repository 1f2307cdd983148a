"""hutch.v1.Network on the gateway. Thin: authenticate, convert, delegate, convert back."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.core.grpc_runtime import Context
from hutch.v1 import network_pb2, network_pb2_grpc
from hutch_gateway.auth import Authenticator, key_from_metadata
from hutch_gateway.network_rules import network_lists
from hutch_gateway.network_service import NetworkService


def _stamp(value: object) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


class NetworkServicer(network_pb2_grpc.NetworkServicer):
    def __init__(self, auth: Authenticator, service: NetworkService) -> None:
        self._auth = auth
        self._service = service

    async def _tenant(self, context: Context) -> str:
        return await self._auth.tenant(key_from_metadata(context.invocation_metadata() or ()))

    async def Update(self, request: network_pb2.UpdateNetworkRequest, context: Context) -> network_pb2.NetworkPolicy:
        record = await self._service.update(
            await self._tenant(context), request.sandbox, network_lists(request.network)
        )
        return network_pb2.NetworkPolicy(**record.network)

    async def Get(self, request: network_pb2.GetNetworkRequest, context: Context) -> network_pb2.NetworkPolicy:
        record = await self._service.get(await self._tenant(context), request.sandbox)
        return network_pb2.NetworkPolicy(**record.network)

    async def GetEgress(self, request: network_pb2.GetEgressRequest, context: Context) -> network_pb2.EgressReport:
        record, rows = await self._service.egress(await self._tenant(context), request.sandbox)
        return network_pb2.EgressReport(
            sandbox_id=record.id,
            destinations=[
                network_pb2.EgressDestination(
                    destination=r.destination,
                    bytes_out=r.bytes_out,
                    bytes_in=r.bytes_in,
                    requests=r.requests,
                    refused=r.refused,
                    first_seen=_stamp(r.first_seen),
                    last_seen=_stamp(r.last_seen),
                )
                for r in rows
            ],
            bytes_out=sum(r.bytes_out for r in rows),
            bytes_in=sum(r.bytes_in for r in rows),
        )
