"""S3 through the minio SDK, which is synchronous: every call runs in a bounded thread pool, and
failures to reach S3 become `Unavailable` with a message that says retrying may help."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from hutch.core import errors
from hutch.core.config import S3Settings

T = TypeVar("T")

_MISSING_CODES = {"NoSuchKey", "NoSuchObject"}


class ObjectMissing(errors.Internal):
    """An object that a chunk row names is not in the bucket."""


def chunk_object_key(tenant_id: str, chunk_hash: str, generation: str) -> str:
    """Where a chunk's object lives; the generation tells apart uploads of the same chunk over time."""
    return f"chunks/{tenant_id}/{chunk_hash[:2]}/{chunk_hash}.{generation}"


class ObjectStore:
    def __init__(self, settings: S3Settings, concurrency: int, timeout_s: float) -> None:
        self.bucket = settings.bucket
        self._endpoint = settings.endpoint
        http = urllib3.PoolManager(
            maxsize=concurrency,
            timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key.get_secret_value(),
            secret_key=settings.secret_key.get_secret_value(),
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, what: str, action: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, action)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ObjectMissing(f"{what}: the object is missing from bucket {self.bucket!r}") from exc
            raise errors.Unavailable(
                f"S3 at {self._endpoint} refused to {what}: {exc.code}: {exc.message}; retry later"
            ) from exc
        except (urllib3.exceptions.HTTPError, MinioException, OSError) as exc:
            raise errors.Unavailable(f"S3 at {self._endpoint} is unreachable ({what}): {exc}; retry later") from exc

    async def ensure_bucket(self) -> None:
        def ensure() -> None:
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket)

        await self._call(f"create bucket {self.bucket!r}", ensure)

    async def put(self, key: str, data: bytes) -> None:
        def put() -> None:
            self._client.put_object(self.bucket, key, io.BytesIO(data), len(data))

        await self._call(f"store {key}", put)

    async def get(self, key: str) -> bytes:
        def get() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self._call(f"read {key}", get)

    async def delete(self, key: str) -> None:
        """Removes an object; one that is already gone counts as removed."""

        def remove() -> None:
            self._client.remove_object(self.bucket, key)

        try:
            await self._call(f"delete {key}", remove)
        except ObjectMissing:
            pass

    async def exists(self, key: str) -> bool:
        def stat() -> bool:
            self._client.stat_object(self.bucket, key)
            return True

        try:
            return await self._call(f"look up {key}", stat)
        except ObjectMissing:
            return False
