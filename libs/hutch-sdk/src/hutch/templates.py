"""Templates: the root filesystems sandboxes start from.

`base` is built in. Import your own from an OCI image (a `docker save` tarball or an OCI image
layout, as a folder or a tar), without any registry:

    from hutch import Template

    Template.import_image("./web.tar", name="web")
    sandbox = Sandbox.create(template="web")
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hutch._config import resolve
from hutch._connection import WRITE_AFTER_END, Connection
from hutch._portal import PORTAL
from hutch._sources import iter_chunks
from hutch.v1 import templates_pb2

# Called with (bytes sent, total bytes) while an image uploads.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TemplateInfo:
    """A template.

    Attributes:
        name: What `Sandbox.create(template=...)` takes.
        builtin: True for the platform's own templates, which cannot be deleted.
        source: Where it came from (the image's digest for an imported one).
        env: The image's environment, as "KEY=VALUE" strings.
        workdir: Where processes start.
        user: Who processes run as by default.
        size_bytes: What its files take.
        created_at: When it was imported.
    """

    name: str
    builtin: bool = False
    source: str = ""
    env: list[str] = field(default_factory=list)
    workdir: str = "/"
    user: str = "root"
    size_bytes: int = 0
    created_at: datetime | None = None

    @classmethod
    def from_proto(cls, message: templates_pb2.Template) -> TemplateInfo:
        created = message.created_at.ToDatetime(tzinfo=UTC) if message.HasField("created_at") else None
        return cls(
            name=message.name,
            builtin=message.builtin,
            source=message.source,
            env=list(message.env),
            workdir=message.workdir or "/",
            user=message.user or "root",
            size_bytes=message.size_bytes,
            created_at=created,
        )


class AsyncTemplate:
    """Imports, lists and deletes templates (coroutines; `Template` is the blocking mirror)."""

    @staticmethod
    async def import_image(
        path: str | os.PathLike[str],
        name: str,
        *,
        on_progress: Progress | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> TemplateInfo:
        """Uploads an image archive and installs it as template `name` on every node.

        Args:
            path: A `docker save` tarball, or an OCI image layout (a folder or a tar of one).
            name: The template's name: lowercase letters, digits, '.', '_' and '-'.
            on_progress: Called with (bytes sent, total) as the upload goes.
            api_key: Overrides HUTCH_API_KEY and the config file.
            endpoint: Overrides HUTCH_ENDPOINT and the config file.

        Raises:
            InvalidArgumentError: The archive is not a valid image, or the name is malformed.
            AlreadyExistsError: A template with that name exists.
            ResourceExhaustedError: The image is larger than the platform allows.
        """
        source = Path(path)
        with _as_archive(source) as archive:
            total = archive.stat().st_size
            async with Connection(resolve(api_key, endpoint, None)) as connection:
                call = connection.templates.Import(None, metadata=connection.metadata)
                with connection.translated(f"import {source} as template {name!r}"):
                    try:
                        header = templates_pb2.ImportTemplateHeader(name=name, size=total)
                        await call.write(templates_pb2.ImportTemplateRequest(header=header))
                        sent = 0
                        with archive.open("rb") as data:
                            async for chunk in iter_chunks(data):
                                await call.write(templates_pb2.ImportTemplateRequest(data=chunk))
                                sent += len(chunk)
                                if on_progress is not None:
                                    on_progress(sent, total)
                        await call.write(templates_pb2.ImportTemplateRequest(end=templates_pb2.ImportTemplateEnd()))
                        await call.done_writing()
                    except WRITE_AFTER_END:
                        pass  # the gateway answered early (e.g. a bad name): awaiting the call raises why
                    except BaseException:
                        call.cancel()
                        raise
                    try:
                        return TemplateInfo.from_proto(await call)
                    except BaseException:
                        call.cancel()
                        raise

    @staticmethod
    async def list(*, api_key: str | None = None, endpoint: str | None = None) -> list[TemplateInfo]:
        """The built-in templates and this tenant's own."""
        async with Connection(resolve(api_key, endpoint, None)) as connection:
            response = await connection.unary(
                "list templates", connection.templates.List, templates_pb2.ListTemplatesRequest()
            )
        return [TemplateInfo.from_proto(t) for t in response.templates]

    @staticmethod
    async def delete(name: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        """Deletes one of this tenant's templates; refused while a live sandbox uses it."""
        async with Connection(resolve(api_key, endpoint, None)) as connection:
            await connection.unary(
                f"delete template {name!r}",
                connection.templates.Delete,
                templates_pb2.DeleteTemplateRequest(name=name),
            )


class Template:
    """Imports, lists and deletes templates."""

    @staticmethod
    def import_image(
        path: str | os.PathLike[str],
        name: str,
        *,
        on_progress: Progress | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> TemplateInfo:
        """Blocking `AsyncTemplate.import_image`; `on_progress` is called from a background thread."""
        return PORTAL.run(
            AsyncTemplate.import_image(path, name, on_progress=on_progress, api_key=api_key, endpoint=endpoint)
        )

    @staticmethod
    def list(*, api_key: str | None = None, endpoint: str | None = None) -> list[TemplateInfo]:
        """The built-in templates and this tenant's own."""
        return PORTAL.run(AsyncTemplate.list(api_key=api_key, endpoint=endpoint))

    @staticmethod
    def delete(name: str, *, api_key: str | None = None, endpoint: str | None = None) -> None:
        """Deletes one of this tenant's templates; refused while a live sandbox uses it."""
        PORTAL.run(AsyncTemplate.delete(name, api_key=api_key, endpoint=endpoint))


class _as_archive:
    """The path itself for a tar; an OCI layout folder tarred into a temporary file first."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temporary: Path | None = None

    def __enter__(self) -> Path:
        if not self._path.is_dir():
            return self._path
        fd, name = tempfile.mkstemp(prefix="hutch-image-", suffix=".tar")
        self._temporary = Path(name)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(self._path.iterdir()):
                tar.add(entry, arcname=entry.name)
        return self._temporary

    def __exit__(self, *exc: object) -> None:
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)


__all__ = ["AsyncTemplate", "Progress", "Template", "TemplateInfo"]
