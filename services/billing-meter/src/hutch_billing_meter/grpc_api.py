"""hutch.v1.Usage, served to the gateway only: every call carries the internal token and the tenant
the gateway authenticated. Thin: convert, delegate, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hutch.core import errors
from hutch.core.grpc_runtime import TENANT_HEADER, Context
from hutch.v1 import usage_pb2, usage_pb2_grpc
from hutch_billing_meter import convert
from hutch_billing_meter.domain.buckets import Granularity
from hutch_billing_meter.service import Comparison, UsageService

# Export pieces (a Parquet row group can be large) are cut to sizes any gRPC channel accepts.
_CHUNK_BYTES = 1024 * 1024


def _tenant(context: Context) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == TENANT_HEADER and isinstance(value, str) and value:
            return value
    raise errors.Unauthenticated("the call names no tenant: the Usage API is reached through the gateway")


def _comparison(result: Comparison) -> usage_pb2.CompareCostsResponse:
    return usage_pb2.CompareCostsResponse(
        workload=result.workload,
        description=result.description,
        usage=convert.quantities(result.usage),
        costs=[
            usage_pb2.PriceBookCost(
                price_book=item.book.name,
                model=item.book.model.value,
                cost=convert.cost(item.cost.gross, item.book.currency),
            )
            for item in result.costs
        ],
    )


class UsageServicer(usage_pb2_grpc.UsageServicer):
    def __init__(self, service: UsageService) -> None:
        self._service = service

    async def Query(self, request: usage_pb2.QueryUsageRequest, context: Context) -> usage_pb2.QueryUsageResponse:
        tenant = _tenant(context)
        result = await self._service.query(
            tenant,
            convert.usage_filter(request.selector),
            convert.granularity(request.granularity, Granularity.HOUR),
            request.price_book,
            request.by_sandbox,
        )
        currency = result.book.currency
        return usage_pb2.QueryUsageResponse(
            tenant_id=tenant,
            price_book=result.book.name,
            buckets=[
                usage_pb2.UsageBucket(
                    start=convert.timestamp(bucket.start),
                    sandbox_id=bucket.sandbox_id,
                    usage=convert.quantities(bucket.usage),
                    cost=convert.cost(bucket.net, currency),
                )
                for bucket in result.buckets
            ],
            total_usage=convert.quantities(result.totals.usage),
            gross_cost=convert.cost(result.totals.gross, currency),
            free_tier_credit=convert.cost(result.totals.credit, currency),
            total_cost=convert.cost(result.totals.net, currency),
        )

    async def Export(
        self, request: usage_pb2.ExportUsageRequest, context: Context
    ) -> AsyncIterator[usage_pb2.ExportUsageChunk]:
        tenant = _tenant(context)
        fmt = convert.export_format(request.format)
        pieces = self._service.export(
            tenant,
            convert.usage_filter(request.selector),
            convert.granularity(request.granularity, Granularity.MINUTE),
            fmt,
            request.price_book,
        )
        yield usage_pb2.ExportUsageChunk(content_type=fmt.content_type)
        async for piece in pieces:
            for offset in range(0, len(piece), _CHUNK_BYTES):
                yield usage_pb2.ExportUsageChunk(data=piece[offset : offset + _CHUNK_BYTES])

    async def Compare(self, request: usage_pb2.CompareCostsRequest, context: Context) -> usage_pb2.CompareCostsResponse:
        tenant = _tenant(context)
        which = request.WhichOneof("workload")
        if which == "shape":
            return _comparison(self._service.compare_shape(request.shape))
        if which == "measured":
            return _comparison(await self._service.compare_measured(tenant, convert.usage_filter(request.measured)))
        raise errors.InvalidArgument("name a workload: a shape, or a window of measured usage")

    async def ListPriceBooks(
        self, request: usage_pb2.ListPriceBooksRequest, context: Context
    ) -> usage_pb2.ListPriceBooksResponse:
        _tenant(context)
        books = self._service.books
        return usage_pb2.ListPriceBooksResponse(
            price_books=[convert.price_book(book) for book in books.all()], default_price_book=books.default
        )
