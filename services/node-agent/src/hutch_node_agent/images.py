"""Templates from OCI images, without a registry.

`read_image` reads an image from a `docker save` tarball (the classic layout with `manifest.json`, or
the OCI layout that newer Docker writes inside it) or from an OCI image layout (a folder or a tar of
one), checks every blob against its digest and returns what `unpack` needs. `unpack` applies the
layers, in order, to an empty folder, which then serves as a template's rootfs.

Images are untrusted input. What keeps them inside the rootfs:

* entry names are relative to the image root: a leading `/` is dropped and `..` is refused;
* paths are walked one component at a time through directory file descriptors opened with
  O_NOFOLLOW, and every write is relative to one of them, so the kernel never resolves a symbolic
  link on our behalf. A symbolic link in the middle of a path is followed only the way it would be
  inside the sandbox (an absolute target starts at the image root), only to a directory that already
  exists in the image, and never above the image root;
* the last component is never followed: an existing entry is removed and a new one is created with
  O_EXCL, so no write lands in an inode that another name (a hard link, a symbolic link) shares;
* hard links may only point at entries already unpacked, found the same way;
* device nodes and FIFOs are skipped, and only `user.*` and `security.capability` extended attributes
  are kept (overlayfs and security-module attributes from an image must not reach the host);
* the tar streams, the entries and every tar header are bounded, and each layer's compressed and
  uncompressed digests are checked again while it is unpacked.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import zstandard

from hutch.core import errors
from hutch_node_agent.domain import DEFAULT_PATH

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "SANDBOX_IDS",
    "Blob",
    "Compression",
    "ImageConfig",
    "ImageSpec",
    "Layer",
    "read_image",
    "unpack",
]

log = logging.getLogger(__name__)

Compression = Literal["gzip", "zstd", "none"]

DEFAULT_MAX_BYTES = 64 << 30
DEFAULT_MAX_ENTRIES = 2_000_000
# A user-namespaced sandbox maps this many ids, starting at its uid_shift; an id beyond them would
# land in the range of another sandbox.
SANDBOX_IDS = 65536

_MAX_JSON_BYTES = 16 << 20
_MAX_ARCHIVE_MEMBERS = 100_000
_MAX_INDEX_DEPTH = 4
_MAX_LINK_HOPS = 40
# tarfile reads pax and GNU long-name headers and sparse maps into memory whole.
_MAX_TAR_HEADER_BYTES = 4 << 20
_MAX_NAME = 4096
_CHUNK = 1 << 20
# tarfile's stream reader copies its buffer on every read: bigger is not faster.
_TAR_BUFFER = 64 << 10

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}
_LAYER_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
_MEDIA_TYPE_OF: dict[Compression, str] = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


# The image ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Where a blob's bytes lie: `size` bytes from `offset` in the file `path`."""

    path: Path
    offset: int
    size: int


@dataclass(frozen=True)
class Layer:
    """One layer, lowest first in `ImageSpec.layers`; `digest` is of the stored (compressed) bytes."""

    index: int
    media_type: str
    digest: str
    size: int
    compression: Compression
    diff_id: str
    blob: Blob

    @property
    def label(self) -> str:
        return f"layer {self.index} ({self.digest[:19]})"


@dataclass(frozen=True)
class ImageConfig:
    """What a template takes from the image's configuration."""

    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = "root"
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    source: str = ""

    def to_template_meta(self) -> dict[str, Any]:
        """The fields of template.json. A PATH is added when the image sets none, as Docker does."""
        env = list(self.env)
        if not any(item.startswith("PATH=") for item in env):
            env.insert(0, f"PATH={DEFAULT_PATH}")
        return {
            "env": env,
            "workdir": self.workdir,
            "user": self.user,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "cmd": list(self.cmd) if self.cmd is not None else None,
            "source": self.source,
        }


@dataclass(frozen=True)
class ImageSpec:
    """An image found in an archive: its layers, lowest first, and its configuration."""

    archive: Path
    format: Literal["docker-save", "oci-layout"]
    digest: str
    platform: str
    config: ImageConfig
    layers: tuple[Layer, ...]


# Reading archives -----------------------------------------------------------------------------


def _clean_name(name: str) -> str | None:
    """A path inside an archive without `.` or empty components; None if it climbs out with `..`."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _DirSource:
    """An image layout unpacked in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def find(self, name: str) -> Blob | None:
        clean = _clean_name(name)
        if not clean:
            return None
        # Blobs may be symbolic links (some tools share them between layouts), but not out of it.
        path = (self.root / clean).resolve()
        if not path.is_relative_to(self.root):
            return None
        try:
            info = path.stat()
        except OSError:
            return None
        return Blob(path, 0, info.st_size) if stat.S_ISREG(info.st_mode) else None


class _TarSource:
    """An image layout or docker-save tarball, read in place: blobs are byte ranges of the tar."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.members: dict[str, tarfile.TarInfo] = {}
        with tarfile.open(archive, "r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > _MAX_ARCHIVE_MEMBERS:
                    raise errors.InvalidArgument(
                        f"{archive} holds more than {_MAX_ARCHIVE_MEMBERS} files: it is not an image archive"
                    )
                clean = _clean_name(member.name)
                if clean:
                    self.members[clean] = member

    def find(self, name: str) -> Blob | None:
        clean = _clean_name(name)
        # Older `docker save` stores a layer shared by two images once and links the other to it.
        for _ in range(8):
            member = self.members.get(clean) if clean else None
            if member is None:
                return None
            if member.issym():
                target = member.linkname
                base = "" if target.startswith("/") else posixpath.dirname(clean or "")
                # A link may climb within the archive (../<id>/layer.tar), never out of it.
                clean = _clean_name(posixpath.normpath(posixpath.join(base, target)))
            elif member.islnk():
                clean = _clean_name(member.linkname)
            elif member.isreg() and not member.issparse():
                return Blob(self.archive, member.offset_data, member.size)
            else:
                return None
        return None


_Source = _DirSource | _TarSource


def _open_source(archive: Path) -> _Source:
    if archive.is_dir():
        return _DirSource(archive)
    try:
        with archive.open("rb") as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise errors.InvalidArgument(f"image archive {archive} does not exist") from None
    if magic.startswith(_GZIP_MAGIC) or magic == _ZSTD_MAGIC:
        raise errors.InvalidArgument(
            f"{archive} is compressed: decompress it first (gunzip / unzstd); the archive itself must be a plain tar"
        )
    try:
        return _TarSource(archive)
    except tarfile.TarError as exc:
        raise errors.InvalidArgument(f"{archive} is neither a folder nor a tar archive: {exc}") from None


def _read_blob(blob: Blob) -> Iterator[memoryview]:
    """Streams a blob's bytes in chunks; stops short if the file is shorter than the blob."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with blob.path.open("rb", buffering=0) as file:
        file.seek(blob.offset)
        left = blob.size
        while left > 0:
            count = file.readinto(view[: min(left, _CHUNK)])
            if not count:
                return
            left -= count
            yield view[:count]


def _digest_of(blob: Blob) -> tuple[str, int, bytes]:
    """The blob's sha256 digest, how many bytes it really has, and its first four bytes."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    for chunk in _read_blob(blob):
        if size == 0:
            head = bytes(chunk[:4])
        digest.update(chunk)
        size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size, head


def _sha256(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{what} has no digest")
    if not _SHA256.fullmatch(value):
        raise errors.InvalidArgument(f"{what} has digest {value!r}: only sha256 digests are supported")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{what} is not a JSON object")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise errors.InvalidArgument(f"{what} is not a list of strings")
    return tuple(value)


def _load_json(blob: Blob, what: str, digest: str | None = None) -> Any:
    if blob.size > _MAX_JSON_BYTES:
        raise errors.InvalidArgument(f"{what} is {blob.size} bytes, more than the {_MAX_JSON_BYTES} allowed")
    data = b"".join(bytes(chunk) for chunk in _read_blob(blob))
    if digest is not None and f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
        raise errors.InvalidArgument(f"{what} does not match its digest {digest}: the archive is corrupt")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def _blob_of(source: _Source, descriptor: dict[str, Any], what: str) -> tuple[str, Blob]:
    """The blob a descriptor names, checked against the descriptor's size."""
    digest = _sha256(descriptor.get("digest"), what)
    blob = source.find(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    if blob is None:
        raise errors.InvalidArgument(f"{what} ({digest}) is missing from the archive")
    size = descriptor.get("size")
    if isinstance(size, int) and size != blob.size:
        raise errors.InvalidArgument(f"{what} ({digest}) is {blob.size} bytes, but its descriptor says {size}")
    return digest, blob


def _sniff(head: bytes) -> Compression:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    # Skippable zstd frames (0x184D2A5x, little-endian) may come before the first real one.
    if head == _ZSTD_MAGIC or (len(head) == 4 and head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return "zstd"
    return "none"


def _checked_layer(
    index: int, media_type: str, declared: Compression | None, digest: str | None, blob: Blob, diff_id: str
) -> Layer:
    """Hashes a layer blob and checks it against its digest, its media type and, when the layer is
    stored uncompressed (its digest is then its diff_id), against the config's diff_id."""
    actual, size, head = _digest_of(blob)
    label = f"layer {index} ({(digest or actual)[:19]})"
    if size != blob.size:
        raise errors.InvalidArgument(f"{label} is cut short: {size} of {blob.size} bytes are in the archive")
    if digest is not None and actual != digest:
        raise errors.InvalidArgument(f"{label} does not match its digest: its bytes hash to {actual}")
    compression = _sniff(head)
    if declared is not None and compression != declared:
        raise errors.InvalidArgument(f"{label} is labelled {media_type!r}, but its bytes are {compression}")
    if compression == "none" and actual != diff_id:
        raise errors.InvalidArgument(f"{label} does not match the config's diff_id {diff_id} for it")
    return Layer(
        index=index,
        media_type=media_type or _MEDIA_TYPE_OF[compression],
        digest=actual,
        size=size,
        compression=compression,
        diff_id=diff_id,
        blob=blob,
    )


@dataclass(frozen=True)
class _Config:
    image: ImageConfig
    diff_ids: tuple[str, ...]
    platform: str


def _parse_config(document: Any, source: str) -> _Config:
    doc = _obj(document, "the image config")
    rootfs = _obj(doc.get("rootfs"), "the image config's rootfs")
    diff_ids = _strings(rootfs.get("diff_ids"), "the image config's rootfs.diff_ids") or ()
    for diff_id in diff_ids:
        _sha256(diff_id, "a diff_id in the image config")
    settings = _obj(doc.get("config") or {}, "the image config's config")
    env = _strings(settings.get("Env"), "Env") or ()
    workdir = settings.get("WorkingDir") or "/"
    user = settings.get("User") or "root"
    if not isinstance(workdir, str) or not isinstance(user, str):
        raise errors.InvalidArgument("the image config's WorkingDir and User must be strings")
    parts = [str(doc.get("os", "")), str(doc.get("architecture", "")), str(doc.get("variant", ""))]
    image = ImageConfig(
        env=env,
        # Docker runs a relative WorkingDir from /.
        workdir=workdir if workdir.startswith("/") else f"/{workdir}",
        user=user,
        entrypoint=_strings(settings.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(settings.get("Cmd"), "Cmd"),
        source=source,
    )
    return _Config(image, diff_ids, "/".join(part for part in parts if part))


def _platform_of(descriptor: dict[str, Any]) -> str | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    parts = [str(platform.get(key, "")) for key in ("os", "architecture", "variant")]
    return "/".join(part for part in parts if part)


def _matches(found: str | None, wanted: str) -> bool:
    """linux/arm64 matches linux/arm64/v8: a variant is compared only when the caller names one."""
    if found is None:
        return False
    have, want = found.split("/"), wanted.split("/")
    return have[:2] == want[:2] and (len(want) < 3 or have[2:3] == want[2:3])


def _is_image(descriptor: dict[str, Any]) -> bool:
    media_type = descriptor.get("mediaType")
    if media_type is not None and media_type not in _MANIFEST_TYPES | _INDEX_TYPES:
        return False
    annotations = descriptor.get("annotations") or {}
    # BuildKit stores provenance and SBOM documents as manifests for the platform "unknown/unknown".
    if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return False
    return not (_platform_of(descriptor) or "").startswith("unknown")


def _pick(source: _Source, entries: list[Any], where: str, platform: str) -> dict[str, Any]:
    """The one descriptor of an index to follow: the one for `platform`, else the only image there."""
    present = [
        entry
        for entry in entries
        if isinstance(entry, dict)
        and _is_image(entry)
        and isinstance(entry.get("digest"), str)
        and _SHA256.fullmatch(entry["digest"])
        and source.find(f"blobs/sha256/{entry['digest'][7:]}") is not None
    ]
    chosen = [entry for entry in present if _matches(_platform_of(entry), platform)]
    chosen = chosen or [entry for entry in present if _platform_of(entry) is None]
    if not chosen and len(present) == 1:
        chosen = present
        log.warning("%s holds no %s image; using its only one, for %s", where, platform, _platform_of(present[0]))
    if len(chosen) == 1:
        return chosen[0]
    found = sorted({_platform_of(entry) or "unnamed" for entry in present})
    if not chosen:
        raise errors.InvalidArgument(f"{where} holds no image for {platform} (it has: {', '.join(found) or 'none'})")
    raise errors.InvalidArgument(
        f"{where} holds {len(chosen)} images for {platform}: put one image in each archive (docker save IMAGE)"
    )


def _read_oci(source: _Source, archive: Path, index: Blob, platform: str) -> ImageSpec:
    where = "index.json"
    document = _obj(_load_json(index, where), where)
    for _ in range(_MAX_INDEX_DEPTH):
        manifests = document.get("manifests")
        if not isinstance(manifests, list):
            raise errors.InvalidArgument(f"{where} has no manifests list")
        descriptor = _pick(source, manifests, where, platform)
        digest, blob = _blob_of(source, descriptor, f"the manifest listed in {where}")
        where = f"manifest {digest[:19]}"
        document = _obj(_load_json(blob, where, digest), where)
        if descriptor.get("mediaType") in _MANIFEST_TYPES or "layers" in document:
            return _oci_image(source, archive, digest, document)
    raise errors.InvalidArgument(f"{archive}: image indexes nest more than {_MAX_INDEX_DEPTH} deep")


def _oci_image(source: _Source, archive: Path, digest: str, manifest: dict[str, Any]) -> ImageSpec:
    where = f"manifest {digest[:19]}"
    config_descriptor = _obj(manifest.get("config"), f"the config descriptor of {where}")
    config_type = config_descriptor.get("mediaType")
    if config_type not in _CONFIG_TYPES:
        raise errors.InvalidArgument(f"{where} is not a container image: its config has media type {config_type!r}")
    config_digest, config_blob = _blob_of(source, config_descriptor, f"the config of {where}")
    config = _parse_config(_load_json(config_blob, f"config {config_digest[:19]}", config_digest), digest)
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list) or len(descriptors) != len(config.diff_ids):
        raise errors.InvalidArgument(f"{where} lists a different number of layers than its config's diff_ids")
    layers = []
    for number, (entry, diff_id) in enumerate(zip(descriptors, config.diff_ids, strict=True), start=1):
        descriptor = _obj(entry, f"layer {number} of {where}")
        media_type = str(descriptor.get("mediaType", ""))
        if media_type not in _LAYER_TYPES:
            raise errors.InvalidArgument(f"layer {number} of {where} has unsupported media type {media_type!r}")
        layer_digest, blob = _blob_of(source, descriptor, f"layer {number} of {where}")
        layers.append(_checked_layer(number, media_type, _LAYER_TYPES[media_type], layer_digest, blob, diff_id))
    return ImageSpec(archive, "oci-layout", digest, config.platform, config.image, tuple(layers))


def _digest_in_name(name: str) -> str | None:
    """docker save names configs `<hex>.json` and, since Docker 25, every blob `blobs/sha256/<hex>`."""
    stem = posixpath.basename(name).removesuffix(".json")
    return f"sha256:{stem}" if re.fullmatch(r"[0-9a-f]{64}", stem) else None


def _read_docker(source: _Source, archive: Path, manifest: Blob) -> ImageSpec:
    entries = _load_json(manifest, "manifest.json")
    if not isinstance(entries, list) or len(entries) != 1:
        count = len(entries) if isinstance(entries, list) else 0
        raise errors.InvalidArgument(
            f"manifest.json of {archive} lists {count} images: save exactly one (docker save IMAGE)"
        )
    entry = _obj(entries[0], "manifest.json's entry")
    config_name = entry.get("Config")
    layer_names = _strings(entry.get("Layers"), "manifest.json's Layers") or ()
    config_digest = _digest_in_name(config_name) if isinstance(config_name, str) else None
    if not isinstance(config_name, str) or config_digest is None:
        raise errors.InvalidArgument(f"manifest.json names its config {config_name!r}, not by its digest")
    config_blob = _find(source, config_name, "the config")
    config = _parse_config(_load_json(config_blob, f"config {config_digest[:19]}", config_digest), config_digest)
    if len(layer_names) != len(config.diff_ids):
        raise errors.InvalidArgument("manifest.json lists a different number of layers than the config's diff_ids")
    layers = []
    for number, (name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True), start=1):
        blob = _find(source, name, f"layer {number}")
        layers.append(_checked_layer(number, "", None, _digest_in_name(name), blob, diff_id))
    return ImageSpec(archive, "docker-save", config_digest, config.platform, config.image, tuple(layers))


def _find(source: _Source, name: str, what: str) -> Blob:
    blob = source.find(name)
    if blob is None:
        raise errors.InvalidArgument(f"{what} ({name!r}) is not a file in the archive")
    return blob


def read_image(archive: Path, *, platform: str = "linux/amd64") -> ImageSpec:
    """Reads the image in `archive` and checks every blob it uses against its digest.

    `archive` is a `docker save` tarball, an OCI image layout folder, or a tar of one. From an index
    of several images the one for `platform` is taken, or the only one there is.
    """
    source = _open_source(archive)
    index = source.find("index.json")
    if index is not None:
        return _read_oci(source, archive, index, platform)
    manifest = source.find("manifest.json")
    if manifest is not None:
        return _read_docker(source, archive, manifest)
    raise errors.InvalidArgument(
        f"{archive} is neither a docker save archive (no manifest.json) nor an OCI image layout (no index.json)"
    )


# Unpacking ------------------------------------------------------------------------------------


class _Refused(Exception):
    """The image asks for something we will not do; the message lacks the layer and entry."""


class _Corrupt(Exception):
    """A layer's bytes do not decompress or do not parse as tar."""


class _ReadInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Reader(io.RawIOBase):
    """Passes on the bytes of `source`, hashing and counting them.

    With `over` unset it ends after `limit` bytes (a blob is a byte range of a larger file);
    with `over` set, more than `limit` bytes is refused with that message. `headers_until`, when
    set, is a tighter limit for the time tarfile spends reading headers, which it holds in memory.
    """

    def __init__(self, source: _ReadInto, limit: int, over: str | None = None) -> None:
        super().__init__()
        self._source = source
        self._limit = limit
        self._over = over
        self.headers_until: int | None = None
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._over is None:
            view = view[: max(self._limit - self.count, 0)]
        try:
            count = self._source.readinto(view) or 0
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise _Corrupt(str(exc) or type(exc).__name__) from None
        self.hash.update(view[:count])
        self.count += count
        if self._over is not None and self.count > self._limit:
            raise _Refused(self._over)
        if self.headers_until is not None and self.count > self.headers_until:
            raise _Refused(f"has tar headers of more than {_MAX_TAR_HEADER_BYTES} bytes")
        return count

    def read(self, size: int = -1) -> bytes:
        return super().read(size) or b""

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @contextmanager
    def headers(self) -> Iterator[None]:
        self.headers_until = self.count + _MAX_TAR_HEADER_BYTES + _TAR_BUFFER
        try:
            yield
        finally:
            self.headers_until = None


@contextmanager
def _layer_stream(layer: Layer, budget: int) -> Iterator[tuple[_Reader, _Reader]]:
    """Opens a layer as (compressed bytes, tar stream), both hashed as they are read."""
    with layer.blob.path.open("rb", buffering=0) as file:
        file.seek(layer.blob.offset)
        packed = _Reader(file, layer.blob.size)
        buffered = io.BufferedReader(packed, _CHUNK)
        inner: io.BufferedIOBase | zstandard.ZstdDecompressionReader
        if layer.compression == "gzip":
            inner = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif layer.compression == "zstd":
            # Layers may hold several frames (zstd:chunked); the default window limit caps memory.
            inner = zstandard.ZstdDecompressor().stream_reader(buffered, read_size=_CHUNK, read_across_frames=True)
        else:
            inner = buffered
        with inner:
            yield packed, _Reader(inner, budget, "unpacks to more than max_bytes")


class _LayerTarFile(tarfile.TarFile):
    # Not in typeshed: in stream mode tarfile keeps every header it has read in this list.
    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        # Headers are never looked up again; keeping them would grow with the entry count.
        self.members.clear()
        return member


def _split(name: str) -> list[str]:
    """An entry name as components relative to the image root; absolute names are taken as relative."""
    if len(name) > _MAX_NAME:
        raise _Refused(f"has a name longer than {_MAX_NAME} characters")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Refused("has a '..' component")
    return parts


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Pending:
    name: str
    via: str | None  # the symbolic link this component came from, for messages


class _Tree:
    """The rootfs being built, reached only through directory file descriptors."""

    def __init__(self, rootfs: Path, owner: _Owner) -> None:
        self.root = os.open(rootfs, _DIR_FLAGS)
        self.owner = owner
        # The final mode and mtime of each directory, set last: writing into a directory changes
        # its mtime, and a read-only mode would stop an unprivileged unpack from filling it.
        self.dirs: dict[str, tuple[int, int | None]] = {"": (0o755, None)}
        # Told of every directory made, so a layer knows what it made itself.
        self.on_create: Callable[[str], None] | None = None
        self._last: tuple[tuple[str, ...], int, str] | None = None
        self.buffer = memoryview(bytearray(_CHUNK))

    def close(self) -> None:
        self.forget()
        os.close(self.root)

    def open_dir(self, parts: list[str], *, create: bool, follow: bool = True) -> tuple[int, str]:
        """Opens the directory `parts` names inside the rootfs; returns (fd, path without links).

        Missing directories are created when `create` is set, except through a symbolic link.
        """
        key = tuple(parts)
        # Entries of one directory come together in a layer: reuse the last walk while nothing
        # has been removed since (a removal could leave the cached fd pointing at a deleted tree).
        if follow and self._last is not None and self._last[0] == key:
            return os.dup(self._last[1]), self._last[2]
        fd, where = self._walk(parts, create=create, follow=follow)
        if follow:
            self.forget()
            self._last = (key, os.dup(fd), where)
        return fd, where

    def forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def _walk(self, parts: list[str], *, create: bool, follow: bool) -> tuple[int, str]:
        fds = [os.dup(self.root)]
        names: list[str] = []
        pending = deque(_Pending(part, None) for part in parts)
        hops = 0
        try:
            while pending:
                item = pending.popleft()
                if item.name == "..":
                    if len(fds) == 1:
                        raise _Refused(f"would be written through a symbolic link ({item.via}) that leaves the image")
                    os.close(fds.pop())
                    names.pop()
                    continue
                if item.name in ("", "."):
                    continue
                step = self._step(fds[-1], item, names, create=create)
                if isinstance(step, int):
                    fds.append(step)
                    names.append(item.name)
                    continue
                hops += 1
                if not follow or hops > _MAX_LINK_HOPS:
                    raise _Refused(f"goes through too many symbolic links (at most {_MAX_LINK_HOPS} are followed)")
                via = f"{'/'.join([*names, item.name])!r} -> {step!r}"
                if step.startswith("/"):  # absolute targets start at the image root, as in the sandbox
                    while len(fds) > 1:
                        os.close(fds.pop())
                    names.clear()
                pending.extendleft(_Pending(part, via) for part in reversed(step.split("/")))
            return fds.pop(), "/".join(names)
        finally:
            for fd in fds:
                os.close(fd)

    def _step(self, parent: int, item: _Pending, names: list[str], *, create: bool) -> int | str:
        """Opens one directory component: its fd, or the target if it is a symbolic link."""
        try:
            return os.open(item.name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if item.via is not None:
                target = "whose target is not a directory in the image"
                raise _Refused(f"would be written through a symbolic link ({item.via}) {target}") from None
            if not create:
                raise
            self.mkdir(parent, item.name, "/".join([*names, item.name]), (0o755, None))
            return os.open(item.name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        info = os.stat(item.name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            return os.readlink(item.name, dir_fd=parent)
        where = "/".join([*names, item.name])
        raise _Refused(f"needs {where!r} to be a directory, but an earlier entry made it a {_kind(info.st_mode)}")

    def mkdir(self, parent: int, name: str, path: str, meta: tuple[int, int | None]) -> None:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self.owner.chown_fd(fd, 0, 0)
        finally:
            os.close(fd)
        self.dirs[path] = meta
        if self.on_create is not None:
            self.on_create(path)

    def remove(self, parent: int, name: str) -> None:
        """Removes an entry of any kind; the walk above never follows a link, so neither does this."""
        self.forget()
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def finish_dirs(self) -> None:
        """Sets every directory's final mode and mtime, deepest first, skipping ones now gone."""
        for path in sorted(self.dirs, key=lambda item: item.count("/") if item else -1, reverse=True):
            mode, mtime = self.dirs[path]
            try:
                fd, _ = self.open_dir(path.split("/") if path else [], create=False, follow=False)
            except (OSError, _Refused):
                continue  # replaced or removed by a later layer
            try:
                os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "directory" if stat.S_ISDIR(mode) else "file"


class _Owner:
    """Sets owners, shifted by uid_shift; only root can, so others keep their own."""

    def __init__(self, uid_shift: int) -> None:
        if uid_shift < 0 or uid_shift + SANDBOX_IDS > 2**32 - 1:
            raise errors.InvalidArgument(f"uid_shift {uid_shift} is out of range")
        self.shift = uid_shift
        self.enabled = os.geteuid() == 0

    def ids(self, uid: int, gid: int) -> tuple[int, int]:
        limit = SANDBOX_IDS if self.shift else 2**32 - 1
        for kind, value in (("uid", uid), ("gid", gid)):
            if not 0 <= value < limit:
                raise _Refused(f"is owned by {kind} {value}, outside the {limit} ids a sandbox maps")
        return uid + self.shift, gid + self.shift

    def chown_fd(self, fd: int, uid: int, gid: int) -> None:
        ids = self.ids(uid, gid)  # checked either way, so an image is refused the same for everyone
        if self.enabled:
            os.fchown(fd, *ids)

    def chown_at(self, parent: int, name: str, uid: int, gid: int) -> None:
        ids = self.ids(uid, gid)
        if self.enabled:
            os.chown(name, *ids, dir_fd=parent, follow_symlinks=False)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # pax allows fractions and negative times; keep them within what utimensat takes.
    return min(max(int(member.mtime * 1_000_000_000), 0), 2**62)


_CAP_V2 = 0x02000000
_CAP_V3 = 0x03000000


def _shift_capability(value: bytes, shift: int) -> bytes:
    """Rewrites file capabilities for the sandbox's user namespace.

    A version 2 capability applies in every namespace; version 3 names the uid that is root where it
    applies, which for a shifted rootfs is the sandbox root, uid_shift (as if set inside the sandbox).
    """
    if not shift or len(value) not in (20, 24):
        return value
    magic = int.from_bytes(value[:4], "little")
    version = magic & 0xFF000000
    if version not in (_CAP_V2, _CAP_V3) or (version == _CAP_V3) != (len(value) == 24):
        return value
    root = int.from_bytes(value[20:24], "little") if version == _CAP_V3 else 0
    flags = magic & 0x00FFFFFF
    return (_CAP_V3 | flags).to_bytes(4, "little") + value[4:20] + (root + shift).to_bytes(4, "little")


def _xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decodes pax values as UTF-8 with surrogateescape; this restores binary values.
            yield key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                yield name, base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue


def _kept_xattr(name: str) -> bool:
    # trusted.overlay.* / user.overlay.* would steer the overlay mount that this rootfs becomes part
    # of; security modules' labels are the host's business, not the image's.
    return name == "security.capability" or (name.startswith("user.") and not name.startswith("user.overlay."))


class _LayerUnpacker:
    """Applies one layer's entries to the tree."""

    def __init__(self, image: _ImageUnpacker, layer: Layer) -> None:
        self.image = image
        self.tree = image.tree
        self.layer = layer
        # Paths this layer made, with their ancestors: whiteouts only remove what lower layers made.
        self.made: set[str] = set()
        self.skipped: list[str] = []
        self.dropped_xattrs: set[str] = set()
        self.tree.on_create = self.mark

    def entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = _split(member.name)
        base = parts[-1] if parts else ""
        if base.startswith(".wh."):
            _discard(tar, member)
            self.whiteout(parts[:-1], base)
            return
        if not parts:
            self.root(member)
            return
        parent, where = self.tree.open_dir(parts[:-1], create=True)
        try:
            path = f"{where}/{base}" if where else base
            self.put(parent, base, path, member, tar)
        finally:
            os.close(parent)

    def put(self, parent: int, name: str, path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if member.isreg():
            self.file(parent, name, member, tar)
        elif member.isdir():
            self.directory(parent, name, path, member)
        elif member.issym():
            self.symlink(parent, name, member)
        elif member.islnk():
            self.hardlink(parent, name, member)
        else:
            kind = "device node or FIFO" if member.isdev() else f"entry of tar type {member.type!r}"
            self.skipped.append(f"{path} ({kind})")
            _discard(tar, member)
            return
        self.mark(path)

    def mark(self, path: str) -> None:
        while path not in self.made:
            self.made.add(path)
            if not path:
                return
            path = posixpath.dirname(path)

    def replace(self, parent: int, name: str, *, keep_dir: bool) -> bool:
        """Clears the way for a new entry; True if a directory is there and `keep_dir` asked to keep it."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if keep_dir and stat.S_ISDIR(info.st_mode):
            return True
        self.tree.remove(parent, name)
        return False

    def file(self, parent: int, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.replace(parent, name, keep_dir=False)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            data = tar.extractfile(member)
            assert data is not None
            with data:
                _copy(data, fd, self.tree.buffer)
            self.finish(fd, member, member.mode)
        finally:
            os.close(fd)

    def finish(self, fd: int, member: tarfile.TarInfo, mode: int | None) -> None:
        # chown first: it clears setuid/setgid bits and file capabilities.
        self.tree.owner.chown_fd(fd, member.uid, member.gid)
        if mode is not None:
            os.fchmod(fd, mode & 0o7777)
        for key, value in _xattrs(member):
            if not _kept_xattr(key):
                self.dropped_xattrs.add(key)
                continue
            if key == "security.capability":
                value = _shift_capability(value, self.tree.owner.shift)
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self.dropped_xattrs.add(f"{key} ({exc.strerror})")
        if mode is not None:
            mtime = _mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))

    def directory(self, parent: int, name: str, path: str, member: tarfile.TarInfo) -> None:
        meta = (member.mode & 0o7777, _mtime_ns(member))
        if not self.replace(parent, name, keep_dir=True):
            self.tree.mkdir(parent, name, path, meta)
        self.tree.dirs[path] = meta
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self.finish(fd, member, None)
        finally:
            os.close(fd)

    def root(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise _Refused("would replace the image's root directory with something other than a directory")
        self.tree.dirs[""] = (member.mode & 0o7777, _mtime_ns(member))
        self.finish(self.tree.root, member, None)

    def symlink(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        if not member.linkname:
            raise _Refused("is a symbolic link to nothing")
        self.replace(parent, name, keep_dir=False)
        os.symlink(member.linkname, name, dir_fd=parent)
        self.tree.owner.chown_at(parent, name, member.uid, member.gid)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def hardlink(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        target = _split(member.linkname)
        if not target:
            raise _Refused("is a hard link to the image root")
        try:
            source, _ = self.tree.open_dir(target[:-1], create=False)
        except FileNotFoundError:
            raise _Refused(f"is a hard link to {member.linkname!r}, which no earlier entry made") from None
        try:
            try:
                origin = os.stat(target[-1], dir_fd=source, follow_symlinks=False)
            except FileNotFoundError:
                raise _Refused(f"is a hard link to {member.linkname!r}, which no earlier entry made") from None
            if stat.S_ISDIR(origin.st_mode):
                raise _Refused(f"is a hard link to the directory {member.linkname!r}")
            try:
                here = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if (here.st_dev, here.st_ino) == (origin.st_dev, origin.st_ino):
                    return
            except FileNotFoundError:
                pass
            self.replace(parent, name, keep_dir=False)
            os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source)

    def whiteout(self, parent_parts: list[str], base: str) -> None:
        if base.startswith(".wh..wh."):
            if base == ".wh..wh..opq":
                self.opaque(parent_parts)
            return  # other .wh..wh.* names are AUFS bookkeeping with no meaning here
        name = base[len(".wh.") :]
        try:
            parent, where = self.tree.open_dir(parent_parts, create=False)
        except FileNotFoundError:
            return  # nothing below to hide
        try:
            if (f"{where}/{name}" if where else name) not in self.made:
                try:
                    self.tree.remove(parent, name)
                except FileNotFoundError:
                    pass
        finally:
            os.close(parent)

    def opaque(self, parts: list[str]) -> None:
        try:
            fd, where = self.tree.open_dir(parts, create=False)
        except FileNotFoundError:
            return
        try:
            self.clear(fd, where)
        finally:
            os.close(fd)

    def clear(self, fd: int, where: str) -> None:
        """Removes what lower layers put under a directory, keeping what this layer put there."""
        for name in os.listdir(fd):
            path = f"{where}/{name}" if where else name
            if path not in self.made:
                self.tree.remove(fd, name)
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # a file or link this layer made
            try:
                self.clear(child, path)
            finally:
                os.close(child)

    def report(self) -> None:
        label = self.layer.label
        if self.skipped:
            examples = ", ".join(self.skipped[:5])
            log.info("%s: skipped %d entries a sandbox gets from its runtime: %s", label, len(self.skipped), examples)
        if self.dropped_xattrs:
            log.info("%s: extended attributes not kept: %s", label, ", ".join(sorted(self.dropped_xattrs)))


def _discard(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Reads past the data of an entry we do not write, here rather than in tarfile's header
    reading, which is bounded."""
    if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES:
        data = tar.extractfile(member)
        if data is not None:
            with data:
                while data.read(_CHUNK):
                    pass


def _copy(data: IO[bytes], fd: int, view: memoryview) -> None:
    # extractfile gives a BufferedReader, which has readinto; typeshed types it as IO[bytes].
    while count := data.readinto(view):  # type: ignore[attr-defined]
        written = 0
        while written < count:
            written += os.write(fd, view[written:count])


def _os_failure(where: str, exc: OSError) -> errors.HutchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.ResourceExhausted(f"{where} cannot be unpacked: {exc.strerror}")
    return errors.InvalidArgument(f"{where} cannot be unpacked: {exc.strerror}")


class _ImageUnpacker:
    def __init__(self, rootfs: Path, uid_shift: int, max_bytes: int, max_entries: int) -> None:
        self.tree = _Tree(rootfs, _Owner(uid_shift))
        self.max_bytes = max_bytes
        self.budget = max_bytes
        self.entries_left = max_entries
        self.max_entries = max_entries
        self.file_bytes = 0

    def run(self, layers: tuple[Layer, ...]) -> None:
        try:
            self.tree.owner.chown_fd(self.tree.root, 0, 0)
            for layer in layers:
                self.layer(layer)
            self.tree.finish_dirs()
        finally:
            self.tree.close()

    def layer(self, layer: Layer) -> None:
        unpacker = _LayerUnpacker(self, layer)
        try:
            # tarfile reads ahead by up to its buffer size: allow for it, or a layer that fits is refused.
            with _layer_stream(layer, self.budget + _TAR_BUFFER) as (packed, stream):
                self.entries(unpacker, stream)
                stream.drain()
                packed.drain()
                self.budget -= stream.count
        except _Refused as exc:
            raise errors.InvalidArgument(f"{layer.label} {exc}") from None
        except (_Corrupt, tarfile.TarError) as exc:
            raise errors.InvalidArgument(
                f"{layer.label} is not a valid {layer.compression} tar stream: {exc}"
            ) from None
        if f"sha256:{packed.hash.hexdigest()}" != layer.digest:
            raise errors.InvalidArgument(f"{layer.label} changed in the archive since it was read")
        if f"sha256:{stream.hash.hexdigest()}" != layer.diff_id:
            raise errors.InvalidArgument(f"{layer.label} does not unpack to its diff_id {layer.diff_id}")
        unpacker.report()

    def entries(self, unpacker: _LayerUnpacker, stream: _Reader) -> None:
        try:
            with stream.headers():
                tar = _LayerTarFile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFFER)
        except tarfile.ReadError:
            if stream.count == 0:
                return  # an empty blob: a layer that changes nothing
            raise
        with tar:
            while True:
                with stream.headers():
                    member = tar.next()
                if member is None:
                    return
                self.entries_left -= 1
                if self.entries_left < 0:
                    raise _Refused(f"brings the image past max_entries ({self.max_entries} entries)")
                self.entry(unpacker, member, tar)

    def entry(self, unpacker: _LayerUnpacker, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        where = f"{unpacker.layer.label} entry {member.name!r}"
        try:
            if member.isreg():
                # Counted apart from the tar streams: sparse files write more than their stream holds.
                self.file_bytes += member.size
                if self.file_bytes > self.max_bytes:
                    raise _Refused(f"is {member.size} bytes, more than is left of max_bytes ({self.max_bytes})")
            unpacker.entry(member, tar)
        except _Refused as exc:
            raise errors.InvalidArgument(f"{where} {exc}") from None
        except OSError as exc:
            raise _os_failure(where, exc) from exc


def unpack(
    image: ImageSpec,
    rootfs: Path,
    uid_shift: int = 0,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> None:
    """Applies the image's layers, lowest first, to the empty folder `rootfs` (made if missing).

    Owners are shifted by `uid_shift` (when running as root) so the rootfs suits a sandbox whose
    root is that host uid. `max_bytes` bounds both the layers' tar streams and the sizes of their
    files, all layers together; `max_entries` bounds their entries. On an error `rootfs` is left
    half-filled: the caller removes it.
    """
    rootfs.mkdir(exist_ok=True)
    if any(rootfs.iterdir()):
        raise errors.FailedPrecondition(f"{rootfs} is not empty: images unpack only into an empty folder")
    plain = sum(layer.size for layer in image.layers if layer.compression == "none")
    if plain > max_bytes:
        raise errors.InvalidArgument(
            f"the image's uncompressed layers alone are {plain} bytes, over max_bytes ({max_bytes})"
        )
    _ImageUnpacker(rootfs, uid_shift, max_bytes, max_entries).run(image.layers)
