"""Snapshot figures (printed, never asserted), on a random (incompressible) stream:

* chunking MB/s, and sealing (BLAKE3 + zstd) MB/s;
* writing a snapshot cold (every chunk new), and again after changing 1% of it (bytes uploaded as a
  share of the stream);
* reading it cold (a fresh store process: chunks decrypted from S3), through the regional cache, and
  warm (the node cache);
* FindMissing and single-chunk GetChunks latency, p50/p99.

Baseline, same run, same bytes: the minio SDK putting and getting them as one object, and as 1 MiB
objects from as many threads as the writer has upload streams.
"""

from __future__ import annotations

import base64
import io
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from figures import report, summary, timed

from hutch.core.config import GrpcSettings, PostgresSettings, S3Settings
from hutch.snapshots.cache import ChunkCache
from hutch.snapshots.chunker import Chunker
from hutch.snapshots.client import MAX_MESSAGE_BYTES, SnapshotStoreClient
from hutch.snapshots.codec import seal
from hutch.snapshots.reader import SnapshotReader
from hutch.snapshots.writer import SnapshotWriter, WriteResult, WriterOptions
from hutch_snapshot_store.app import running
from hutch_snapshot_store.settings import SnapshotStoreOptions, SnapshotStoreSettings

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
SIZE = 256 * MiB
TOKEN = "bench-token"
LATENCY_RUNS = 50


def settings_for(postgres_dsn: str, s3: Any, bucket: str, cache_dir: Path, master_key: str) -> SnapshotStoreSettings:
    return SnapshotStoreSettings(
        internal_token=TOKEN,  # type: ignore[arg-type]
        postgres=PostgresSettings(dsn=postgres_dsn),  # type: ignore[arg-type]
        s3=S3Settings(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, bucket=bucket),
        grpc=GrpcSettings(port=0, max_message_bytes=MAX_MESSAGE_BYTES),
        snapshot_store=SnapshotStoreOptions(
            master_key=master_key,  # type: ignore[arg-type]
            cache_dir=cache_dir,
            cache_bytes=4 * SIZE,
        ),
    )


@asynccontextmanager
async def client_of(settings: SnapshotStoreSettings) -> AsyncIterator[SnapshotStoreClient]:
    async with running(settings) as service:
        client = SnapshotStoreClient.connect(f"127.0.0.1:{service.server.port}", TOKEN)
        try:
            yield client
        finally:
            await client.close()


def line(label: str, figures: str) -> str:
    return f"{label:<34}{figures}"


def mbps(size: int, seconds: float) -> float:
    return size / MiB / seconds


def changed(data: bytes, percent: float) -> bytes:
    rng = random.Random(7)
    out = bytearray(data)
    span = int(len(data) * percent / 100 / 8)
    for _ in range(8):
        start = rng.randrange(0, len(data) - span)
        out[start : start + span] = rng.randbytes(span)
    return bytes(out)


def baseline(s3: Any, bucket: str, data: bytes, streams: int) -> tuple[list[str], float, float]:
    """Printed lines, and the parallel put and get rates (MB/s) the store is compared with."""
    client = s3.client()
    lines = []
    start = time.perf_counter()
    client.put_object(bucket, "baseline/whole", io.BytesIO(data), len(data), part_size=16 * MiB)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    response = client.get_object(bucket, "baseline/whole")
    got = response.read()
    response.close()
    response.release_conn()
    get_s = time.perf_counter() - start
    assert len(got) == len(data)
    lines.append(
        line(
            "baseline minio, one object:",
            f"put {mbps(len(data), put_s):7.1f} MB/s  get {mbps(len(data), get_s):7.1f} MB/s",
        )
    )

    pieces = [data[i : i + MiB] for i in range(0, len(data), MiB)]

    def put(n: int) -> None:
        client.put_object(bucket, f"baseline/piece-{n}", io.BytesIO(pieces[n]), len(pieces[n]))

    def get(n: int) -> int:
        r = client.get_object(bucket, f"baseline/piece-{n}")
        try:
            return len(r.read())
        finally:
            r.close()
            r.release_conn()

    with ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        list(pool.map(put, range(len(pieces))))
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(get, range(len(pieces))))
        get_s = time.perf_counter() - start
    lines.append(
        f"baseline minio, 1 MiB x {streams} threads: put {mbps(len(data), put_s):7.1f} MB/s  "
        f"get {mbps(len(data), get_s):7.1f} MB/s"
    )
    return lines, mbps(len(data), put_s), mbps(len(data), get_s)


async def test_snapshot_throughput(postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    options = WriterOptions()
    lines = [f"stream: {SIZE // MiB} MiB of random bytes; {os.cpu_count()} cores"]

    # Pure CPU stages.
    start = time.perf_counter()
    chunker = Chunker()
    chunks = []
    for offset in range(0, SIZE, 8 * MiB):
        chunks += chunker.feed(data[offset : offset + 8 * MiB])
    chunks += chunker.finish()
    lines.append(line("chunking:", f"{mbps(SIZE, time.perf_counter() - start):7.1f} MB/s ({len(chunks)} chunks)"))
    with ThreadPoolExecutor(options.seal_workers) as pool:
        start = time.perf_counter()
        list(pool.map(seal, chunks))
        lines.append(
            line(f"sealing, {options.seal_workers} threads:", f"{mbps(SIZE, time.perf_counter() - start):7.1f} MB/s")
        )
    del chunks

    baseline_lines, put_rate, get_rate = baseline(s3_server, s3_bucket, data, options.upload_streams)
    lines += baseline_lines

    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    tenant = "tn-bench"
    node_cache = await ChunkCache.open(tmp_path / "node-cache", 4 * SIZE)
    settings = settings_for(postgres_dsn, s3_server, s3_bucket, tmp_path / "regional-1", master_key)
    async with client_of(settings) as client:

        async def write(payload: bytes) -> tuple[WriteResult, float]:
            begin = time.perf_counter()
            async with SnapshotWriter(client, tenant, cache=node_cache, options=options) as writer:
                await writer.add_bytes("rootfs", payload)
                result = await writer.commit()
            return result, time.perf_counter() - begin

        cold, cold_s = await write(data)
        lines.append(line("write cold / baseline parallel put:", f"{mbps(SIZE, cold_s) / put_rate:7.2f}"))
        lines.append(
            line(
                "write cold:",
                f"{mbps(SIZE, cold_s):7.1f} MB/s (uploaded {cold.stats.uploaded_bytes / SIZE:.1%} of the stream)",
            )
        )
        warm, warm_s = await write(changed(data, 1.0))
        lines.append(
            line(
                "write after changing 1%:",
                f"{mbps(SIZE, warm_s):7.1f} MB/s "
                f"(uploaded {warm.stats.uploaded_bytes / SIZE:.2%} of the stream, {warm.stats.new_chunks} new chunks)",
            )
        )
        stream = cold.manifest.streams[0]

        reader = SnapshotReader(client, tenant, cache=node_cache)
        start = time.perf_counter()
        await reader.restore_stream(stream, tmp_path / "warm.img")
        lines.append(
            line("read warm (node cache):", f"{mbps(SIZE, time.perf_counter() - start):7.1f} MB/s {reader.stats}")
        )

        regional = SnapshotReader(client, tenant)
        start = time.perf_counter()
        await regional.restore_stream(stream, tmp_path / "regional.img")
        lines.append(
            line("read via regional cache:", f"{mbps(SIZE, time.perf_counter() - start):7.1f} MB/s {regional.stats}")
        )

        hashes = [c.hash for c in stream.chunks]
        begun = await client.begin(tenant)
        find_samples: list[float] = []
        get_samples: list[float] = []
        for n in range(LATENCY_RUNS):
            with timed(find_samples):
                await client.find_missing(tenant, begun.snapshot_id, hashes[:64])
            with timed(get_samples):
                async for _ in client.get_chunks(tenant, [hashes[n % len(hashes)]]):
                    pass
        await client.abort(tenant, begun.snapshot_id)
        lines.append(summary("FindMissing, 64 hashes", find_samples))
        lines.append(summary("GetChunks, 1 chunk from the regional cache", get_samples))

    # A fresh store process with an empty regional cache: every chunk comes from S3.
    fresh = settings_for(postgres_dsn, s3_server, s3_bucket, tmp_path / "regional-2", master_key)
    async with client_of(fresh) as client:
        cold_reader = SnapshotReader(client, tenant)
        start = time.perf_counter()
        await cold_reader.restore_stream(stream, tmp_path / "cold.img")
        cold_read_s = time.perf_counter() - start
        lines.append(line("read cold (S3):", f"{mbps(SIZE, cold_read_s):7.1f} MB/s {cold_reader.stats}"))
        lines.append(line("read cold / baseline parallel get:", f"{mbps(SIZE, cold_read_s) / get_rate:7.2f}"))
    assert (tmp_path / "cold.img").read_bytes() == data
    report("snapshot-store", lines)
