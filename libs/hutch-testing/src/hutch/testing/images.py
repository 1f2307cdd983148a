"""OCI images built on the spot for tests: tar files written with Python's tarfile, no registry.

    ImageBuilder().layer(files={"etc/motd": "hello"}, dirs={"tmp": 0o1777})
                  .layer(whiteouts=["etc/motd"])
                  .config(env=["PATH=/bin"], workdir="/root", user="1000:1000")
                  .write_oci_layout(tmp_path / "image", compression="zstd")

Entries of a layer are written in this order: directories, opaque markers, whiteouts, files,
symbolic links, hard links, special files. `raw_layer` takes hand-made tar entries in any order, for
what `layer` cannot express (names with `..`, absolute names, odd entry types).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

from hutch.testing.templates import BUSYBOX

__all__ = [
    "MTIME",
    "Dir",
    "BuiltImage",
    "Entry",
    "File",
    "ImageBuilder",
    "entry",
    "write_multiarch_layout",
]

Compression = Literal["gzip", "zstd", "none"]
Entry = tuple[tarfile.TarInfo, bytes | None]

MTIME = 1_700_000_000
_MEDIA_TYPES: dict[Compression, str] = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_INDEX = "application/vnd.oci.image.index.v1+json"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
_GROUP = "root:x:0:\nuser:x:1000:\n"


@dataclass(frozen=True)
class File:
    data: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


def entry(
    name: str,
    *,
    type: bytes = tarfile.REGTYPE,
    data: bytes | str | None = None,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    xattrs: Mapping[str, bytes] | None = None,
    devmajor: int = 0,
    devminor: int = 0,
) -> Entry:
    """One tar entry, exactly as given: nothing about its name or link is cleaned."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.devmajor, info.devminor = devmajor, devminor
    payload = data.encode() if isinstance(data, str) else data
    if payload is not None:
        info.size = len(payload)
    if xattrs:
        # Go's archive/tar (Docker, BuildKit) writes xattrs as these pax records, with binary values.
        info.pax_headers = {
            f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape") for key, value in xattrs.items()
        }
    return info, payload


def _dir_entry(path: str, spec: int | Dir) -> Entry:
    meta = spec if isinstance(spec, Dir) else Dir(mode=spec)
    return entry(
        path, type=tarfile.DIRTYPE, mode=meta.mode, uid=meta.uid, gid=meta.gid, mtime=meta.mtime, xattrs=meta.xattrs
    )


def _file_entry(path: str, content: bytes | str | File) -> Entry:
    meta = content if isinstance(content, File) else File(data=content)
    return entry(path, data=meta.data, mode=meta.mode, uid=meta.uid, gid=meta.gid, mtime=meta.mtime, xattrs=meta.xattrs)


def _tar(entries: Sequence[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def _compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class _Layer:
    tar: bytes
    compression: Compression | None


@dataclass(frozen=True)
class BuiltImage:
    """An image as blobs: `blobs` maps digest to bytes, `layers` lists (digest, media type)."""

    manifest: bytes
    config: bytes
    blobs: dict[str, bytes]
    layers: list[tuple[str, str]]
    diff_ids: list[str]

    @property
    def manifest_digest(self) -> str:
        return _digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return _digest(self.config)


class ImageBuilder:
    """Builds an image layer by layer; the write_* methods lay it out as an archive."""

    def __init__(self, *, os: str = "linux", architecture: str = "amd64") -> None:
        self._layers: list[_Layer] = []
        self._settings: dict[str, Any] = {}
        self.os = os
        self.architecture = architecture

    def layer(
        self,
        *,
        files: Mapping[str, bytes | str | File] | None = None,
        dirs: Mapping[str, int | Dir] | None = None,
        symlinks: Mapping[str, str] | None = None,
        hardlinks: Mapping[str, str] | None = None,
        whiteouts: Iterable[str] = (),
        opaque: Iterable[str] = (),
        fifos: Iterable[str] = (),
        devices: Mapping[str, tuple[int, int]] | None = None,
        compression: Compression | None = None,
    ) -> ImageBuilder:
        """Adds a layer. Keys are paths in the image; `hardlinks` maps a new path to an existing one;
        `whiteouts` are paths to delete from lower layers; `opaque` are directories to empty."""
        entries: list[Entry] = []
        entries += [_dir_entry(path, spec) for path, spec in (dirs or {}).items()]
        entries += [entry(_join(path, ".wh..wh..opq"), data=b"") for path in opaque]
        entries += [entry(_whiteout(path), data=b"") for path in whiteouts]
        entries += [_file_entry(path, content) for path, content in (files or {}).items()]
        entries += [
            entry(path, type=tarfile.SYMTYPE, linkname=target, mode=0o777) for path, target in (symlinks or {}).items()
        ]
        entries += [entry(path, type=tarfile.LNKTYPE, linkname=target) for path, target in (hardlinks or {}).items()]
        entries += [entry(path, type=tarfile.FIFOTYPE) for path in fifos]
        entries += [
            entry(path, type=tarfile.CHRTYPE, devmajor=major, devminor=minor)
            for path, (major, minor) in (devices or {}).items()
        ]
        return self.raw_layer(entries, compression=compression)

    def raw_layer(self, entries: Sequence[Entry], *, compression: Compression | None = None) -> ImageBuilder:
        """Adds a layer of hand-made entries (see `entry`), written in the order given."""
        self._layers.append(_Layer(_tar(entries), compression))
        return self

    def tar_layer(self, data: bytes, *, compression: Compression | None = None) -> ImageBuilder:
        """Adds a layer from the bytes of a tar stream (or of anything else, to test refusals)."""
        self._layers.append(_Layer(data, compression))
        return self

    def busybox(self, *, compression: Compression | None = None) -> ImageBuilder:
        """Adds a layer with busybox-static, its applets as symbolic links, root and a user, so a
        sandbox can run the image."""
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        dirs = {name: 0o755 for name in ("bin", "etc", "root", "home", "proc", "sys", "dev", "usr", "usr/bin")}
        dirs["tmp"] = 0o1777
        dirs["root"] = 0o700
        return self.layer(
            dirs={**dirs, "home/user": Dir(uid=1000, gid=1000)},
            files={
                "bin/busybox": File(BUSYBOX.read_bytes(), mode=0o755),
                "etc/passwd": _PASSWD,
                "etc/group": _GROUP,
            },
            symlinks={f"bin/{name}": "busybox" for name in applets if name != "busybox" and "/" not in name},
            compression=compression,
        )

    def config(
        self,
        *,
        env: Sequence[str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        entrypoint: Sequence[str] | None = None,
        cmd: Sequence[str] | None = None,
    ) -> ImageBuilder:
        """Sets the config's Env, WorkingDir, User, Entrypoint and Cmd (those given)."""
        lists = {"Env": env, "Entrypoint": entrypoint, "Cmd": cmd}
        self._settings.update({key: list(value) for key, value in lists.items() if value is not None})
        self._settings.update({key: value for key, value in {"WorkingDir": workdir, "User": user}.items() if value})
        return self

    def build(self, compression: Compression = "gzip") -> BuiltImage:
        """The image's blobs; layers without their own compression get `compression`."""
        blobs: dict[str, bytes] = {}
        layers: list[tuple[str, str]] = []
        diff_ids: list[str] = []
        for layer in self._layers:
            how = layer.compression or compression
            blob = _compress(layer.tar, how)
            blobs[_digest(blob)] = blob
            layers.append((_digest(blob), _MEDIA_TYPES[how]))
            diff_ids.append(_digest(layer.tar))
        config = _json(
            {
                "architecture": self.architecture,
                "os": self.os,
                "config": self._settings,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": "hutch.testing.images"} for _ in diff_ids],
            }
        )
        blobs[_digest(config)] = config
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": _MANIFEST,
                "config": {"mediaType": _CONFIG, "digest": _digest(config), "size": len(config)},
                "layers": [
                    {"mediaType": media_type, "digest": digest, "size": len(blobs[digest])}
                    for digest, media_type in layers
                ],
            }
        )
        blobs[_digest(manifest)] = manifest
        return BuiltImage(manifest, config, blobs, layers, diff_ids)

    def descriptor(self, built: BuiltImage) -> dict[str, Any]:
        return {
            "mediaType": _MANIFEST,
            "digest": built.manifest_digest,
            "size": len(built.manifest),
            "platform": {"os": self.os, "architecture": self.architecture},
        }

    def write_oci_layout(
        self, path: Path, *, compression: Compression = "gzip", tar: bool = False, ref: str = "latest"
    ) -> Path:
        """Writes an OCI image layout: a folder at `path`, or a tar file there when `tar` is set."""
        built = self.build(compression)
        descriptor = {**self.descriptor(built), "annotations": {"org.opencontainers.image.ref.name": ref}}
        files = _layout_files(built.blobs, [descriptor])
        return _write_tree(path, files, tar=tar)

    def write_docker_save(
        self, path: Path, *, repo_tag: str = "hutch-test:latest", oci: bool = False, compression: Compression = "none"
    ) -> Path:
        """Writes a `docker save` tarball: the classic layout (`<id>/layer.tar`, `<config>.json`,
        uncompressed layers) or, with `oci`, the OCI layout with a manifest.json that Docker 25+ writes."""
        built = self.build(compression)
        if oci:
            files = _layout_files(built.blobs, [self.descriptor(built)])
            layer_names = [f"blobs/sha256/{digest[7:]}" for digest, _ in built.layers]
            config_name = f"blobs/sha256/{built.config_digest[7:]}"
        else:
            files = {}
            layer_names = []
            for number, (digest, _) in enumerate(built.layers):
                layer_id = hashlib.sha256(f"{number}:{digest}".encode()).hexdigest()
                files[f"{layer_id}/VERSION"] = b"1.0"
                files[f"{layer_id}/layer.tar"] = built.blobs[digest]
                layer_names.append(f"{layer_id}/layer.tar")
            config_name = f"{built.config_digest[7:]}.json"
            files[config_name] = built.config
        files["manifest.json"] = _json([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}])
        return _write_tree(path, files, tar=True)


def write_multiarch_layout(
    path: Path,
    images: Sequence[ImageBuilder],
    *,
    nested: bool = True,
    compression: Compression = "gzip",
    attestation: bool = False,
    tar: bool = False,
) -> Path:
    """Writes an OCI layout of several images, one per platform (each builder's os/architecture).

    With `nested`, index.json points at an image index that lists them, as `docker buildx` and
    registries lay out multi-platform images; otherwise index.json lists them itself. With
    `attestation`, an attestation manifest for "unknown/unknown" is listed as BuildKit does.
    """
    blobs: dict[str, bytes] = {}
    descriptors = []
    for image in images:
        built = image.build(compression)
        blobs.update(built.blobs)
        descriptors.append(image.descriptor(built))
    if attestation:
        statement = _json({"_type": "https://in-toto.io/Statement/v0.1"})
        blobs[_digest(statement)] = statement
        config = _json({})
        blobs[_digest(config)] = config
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": _MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _digest(config),
                    "size": 2,
                },
                "layers": [
                    {"mediaType": "application/vnd.in-toto+json", "digest": _digest(statement), "size": len(statement)}
                ],
            }
        )
        blobs[_digest(manifest)] = manifest
        descriptors.append(
            {
                "mediaType": _MANIFEST,
                "digest": _digest(manifest),
                "size": len(manifest),
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            }
        )
    if nested:
        index = _json({"schemaVersion": 2, "mediaType": _INDEX, "manifests": descriptors})
        blobs[_digest(index)] = index
        descriptors = [{"mediaType": _INDEX, "digest": _digest(index), "size": len(index)}]
    return _write_tree(path, _layout_files(blobs, descriptors), tar=tar)


def _layout_files(blobs: Mapping[str, bytes], manifests: list[dict[str, Any]]) -> dict[str, bytes]:
    files = {f"blobs/sha256/{digest[7:]}": data for digest, data in blobs.items()}
    files["oci-layout"] = _json({"imageLayoutVersion": "1.0.0"})
    files["index.json"] = _json({"schemaVersion": 2, "mediaType": _INDEX, "manifests": manifests})
    return files


def _write_tree(path: Path, files: Mapping[str, bytes], *, tar: bool) -> Path:
    if not tar:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(data))
    return path


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if directory.strip("/") else name


def _whiteout(path: str) -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    return _join(head, f".wh.{tail}")
