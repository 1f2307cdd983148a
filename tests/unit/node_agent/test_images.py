"""Templates from OCI images: reading archives, unpacking layers, and refusing hostile ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from hutch.core import errors
from hutch.testing.images import MTIME, Dir, File, ImageBuilder, entry, write_multiarch_layout
from hutch_node_agent import images
from hutch_node_agent.templates import DEFAULT_PATH

ROOT = os.geteuid() == 0
CAP_NET_RAW_V2 = bytes.fromhex("0000000200200000000000000000000000000000")


def unpacked(builder: ImageBuilder, tmp_path: Path, *, uid_shift: int = 0, **limits: int) -> Path:
    archive = builder.write_oci_layout(tmp_path / "image")
    rootfs = tmp_path / "rootfs"
    images.unpack(images.read_image(archive), rootfs, uid_shift, **limits)
    return rootfs


def refused(builder: ImageBuilder, tmp_path: Path, needle: str, **limits: int) -> str:
    with pytest.raises(errors.InvalidArgument) as info:
        unpacked(builder, tmp_path, **limits)
    assert needle in info.value.message
    return info.value.message


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under `folder` with its mode and content, to prove nothing there changed."""
    found: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content: bytes | str | None = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        else:
            content = None
        found[str(path.relative_to(folder))] = (info.st_mode, content)
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the rootfs holding things an image must not reach."""
    folder = tmp_path / "outside"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "passwd").write_text("host\n")
    (folder / "secret").write_text("host secret\n")
    return folder


# Formats ----------------------------------------------------------------------------------------


def sample() -> ImageBuilder:
    return (
        ImageBuilder()
        .layer(dirs={"etc": 0o755, "tmp": 0o1777}, files={"etc/hostname": "sample\n", "etc/motd": "hello\n"})
        .layer(files={"usr/bin/tool": File(b"#!/bin/sh\n", mode=0o755)}, whiteouts=["etc/motd"])
        .config(env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], workdir="/srv", user="1000:100", cmd=["sh"])
    )


def check_sample(rootfs: Path) -> None:
    assert (rootfs / "etc" / "hostname").read_text() == "sample\n"
    assert not (rootfs / "etc" / "motd").exists()
    assert (rootfs / "usr" / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((rootfs / "usr" / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert not list(rootfs.rglob(".wh.*"))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("layout", ["oci-folder", "oci-tar", "docker-save", "docker-save-oci"])
def test_every_format_and_compression_unpacks_the_same_tree(
    tmp_path: Path, layout: str, compression: images.Compression
) -> None:
    builder = sample()
    if layout == "oci-folder":
        archive = builder.write_oci_layout(tmp_path / "image", compression=compression)
    elif layout == "oci-tar":
        archive = builder.write_oci_layout(tmp_path / "image.tar", compression=compression, tar=True)
    else:
        archive = builder.write_docker_save(
            tmp_path / "image.tar", oci=layout == "docker-save-oci", compression=compression
        )

    image = images.read_image(archive)
    images.unpack(image, tmp_path / "rootfs")

    assert image.format == ("docker-save" if layout == "docker-save" else "oci-layout")
    assert [layer.compression for layer in image.layers] == [compression, compression]
    assert image.platform == "linux/amd64"
    check_sample(tmp_path / "rootfs")


def test_layers_may_each_use_their_own_compression(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(files={"a": "gzip"}, compression="gzip")
        .layer(files={"b": "zstd"}, compression="zstd")
        .layer(files={"c": "plain"}, compression="none")
    )

    image = images.read_image(builder.write_oci_layout(tmp_path / "image"))
    images.unpack(image, tmp_path / "rootfs")

    assert [layer.compression for layer in image.layers] == ["gzip", "zstd", "none"]
    assert [layer.media_type.rsplit(".", 1)[-1] for layer in image.layers] == ["tar+gzip", "tar+zstd", "tar"]
    assert {p.name: p.read_text() for p in (tmp_path / "rootfs").iterdir()} == {"a": "gzip", "b": "zstd", "c": "plain"}


def test_config_fields_become_template_metadata(tmp_path: Path) -> None:
    image = images.read_image(sample().write_oci_layout(tmp_path / "image"))

    assert image.config.to_template_meta() == {
        "env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "workdir": "/srv",
        "user": "1000:100",
        "entrypoint": None,
        "cmd": ["sh"],
        "source": image.digest,
    }
    assert image.digest.startswith("sha256:")


def test_a_bare_config_gets_docker_defaults(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(files={"x": "1"}).config(workdir="app", user="nobody", entrypoint=["/x"])

    meta = images.read_image(builder.write_oci_layout(tmp_path / "image")).config.to_template_meta()

    assert meta["env"] == [f"PATH={DEFAULT_PATH}"]
    assert (meta["workdir"], meta["user"], meta["entrypoint"], meta["cmd"]) == ("/app", "nobody", ["/x"], None)
    assert images.ImageConfig().to_template_meta()["user"] == "root"
    assert images.ImageConfig().to_template_meta()["workdir"] == "/"


def test_docker_save_source_is_the_image_id(tmp_path: Path) -> None:
    builder = sample()
    image = images.read_image(builder.write_docker_save(tmp_path / "image.tar"))

    assert image.digest == builder.build("none").config_digest
    assert image.config.source == image.digest


def test_an_empty_layer_changes_nothing(tmp_path: Path) -> None:
    rootfs = unpacked(ImageBuilder().layer(files={"a": "1"}).tar_layer(b"", compression="none"), tmp_path)

    assert (rootfs / "a").read_text() == "1"


def test_a_busybox_image_runs_from_its_rootfs(tmp_path: Path) -> None:
    rootfs = unpacked(ImageBuilder().busybox().config(env=["PATH=/bin"]), tmp_path)

    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert (rootfs / "home" / "user").is_dir()
    if ROOT and shutil.which("chroot"):
        result = subprocess.run(
            ["chroot", str(rootfs), "/bin/sh", "-c", "echo hi from $(whoami)"], capture_output=True, text=True
        )
        assert result.stdout == "hi from root\n"


# Layer semantics --------------------------------------------------------------------------------


def test_whiteouts_remove_files_and_directories_of_lower_layers(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(files={"keep": "1", "gone": "2", "dir/a": "3", "dir/sub/b": "4"})
        .layer(whiteouts=["gone", "dir", "never-existed"])
    )

    rootfs = unpacked(builder, tmp_path)

    assert sorted(p.name for p in rootfs.iterdir()) == ["keep"]


def test_a_whiteout_spares_what_its_own_layer_made(tmp_path: Path) -> None:
    builder = ImageBuilder().raw_layer([entry("x", data="same layer"), entry(".wh.x", data="")])

    assert (unpacked(builder, tmp_path) / "x").read_text() == "same layer"


def test_an_opaque_directory_hides_only_lower_layers(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(files={"d/old": "1", "d/sub/old": "2", "other": "3"})
        .raw_layer(
            [
                entry("d", type=tarfile.DIRTYPE, mode=0o750),
                entry("d/new-before", data="4"),
                entry("d/sub/new", data="5"),
                entry("d/.wh..wh..opq", data=""),
                entry("d/new-after", data="6"),
            ]
        )
    )

    rootfs = unpacked(builder, tmp_path)

    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == [
        "d",
        "d/new-after",
        "d/new-before",
        "d/sub",
        "d/sub/new",
        "other",
    ]
    assert stat.S_IMODE((rootfs / "d").stat().st_mode) == 0o750


def test_hard_links_reach_entries_of_the_same_and_earlier_layers(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(files={"bin/tool": File(b"tool", mode=0o755)}, hardlinks={"bin/same": "bin/tool"})
        .layer(hardlinks={"usr/bin/tool": "bin/tool"})
        .layer(files={"bin/tool": "rewritten"})
    )

    rootfs = unpacked(builder, tmp_path)

    same, later = (rootfs / "bin" / "same").stat(), (rootfs / "usr" / "bin" / "tool").stat()
    assert (same.st_ino, same.st_nlink) == (later.st_ino, 2)
    assert (rootfs / "usr" / "bin" / "tool").read_bytes() == b"tool"
    assert (rootfs / "bin" / "tool").read_text() == "rewritten"


def test_a_hard_link_to_nothing_is_refused(tmp_path: Path) -> None:
    refused(ImageBuilder().layer(hardlinks={"a": "missing"}), tmp_path, "which no earlier entry made")


def test_symlinks_keep_their_target_verbatim(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(symlinks={"abs": "/usr/lib/x", "rel": "../up", "dangling": "nowhere"})

    rootfs = unpacked(builder, tmp_path)

    assert {p.name: os.readlink(p) for p in rootfs.iterdir()} == {
        "abs": "/usr/lib/x",
        "rel": "../up",
        "dangling": "nowhere",
    }


def test_later_layers_write_through_merged_usr_links_as_the_sandbox_sees_them(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(dirs={"usr": 0o755, "usr/bin": 0o755}, symlinks={"bin": "usr/bin", "sbin": "/usr/bin"})
        .layer(files={"bin/a": "a", "sbin/b": "b"})
    )

    rootfs = unpacked(builder, tmp_path)

    assert os.readlink(rootfs / "bin") == "usr/bin"
    assert sorted(p.name for p in (rootfs / "usr" / "bin").iterdir()) == ["a", "b"]


def test_modes_times_and_special_bits_survive(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(
        dirs={"shared": Dir(mode=0o2775, mtime=MTIME - 100), "tmp": 0o1777, "locked": 0o500},
        files={
            "usr/bin/su": File(b"su", mode=0o4755),
            "usr/bin/wall": File(b"wall", mode=0o2755),
            "locked/file": File(b"ro", mode=0o400, mtime=MTIME - 5),
        },
        symlinks={"link": "usr/bin/su"},
    )

    rootfs = unpacked(builder, tmp_path)

    modes = {name: stat.S_IMODE((rootfs / name).lstat().st_mode) for name in ("shared", "tmp", "locked")}
    assert modes == {"shared": 0o2775, "tmp": 0o1777, "locked": 0o500}
    assert stat.S_IMODE((rootfs / "usr" / "bin" / "su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((rootfs / "usr" / "bin" / "wall").stat().st_mode) == 0o2755
    assert (rootfs / "locked" / "file").stat().st_mtime == MTIME - 5
    assert (rootfs / "shared").stat().st_mtime == MTIME - 100
    assert (rootfs / "link").lstat().st_mtime == MTIME


@pytest.mark.skipif(not ROOT, reason="setting owners needs root")
def test_owners_are_shifted_into_the_sandbox_range(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(
            dirs={"home/user": Dir(uid=1000, gid=1000)},
            files={"home/user/f": File(b"x", uid=1000, gid=100), "etc/shadow": File(b"", mode=0o640, gid=42)},
        )
        .raw_layer([entry("home/user/l", type=tarfile.SYMTYPE, linkname="f", uid=1000, gid=1000)])
    )

    rootfs = unpacked(builder, tmp_path, uid_shift=100_000)

    def owner(path: Path) -> tuple[int, int]:
        info = path.lstat()
        return info.st_uid, info.st_gid

    assert owner(rootfs) == (100_000, 100_000)
    assert owner(rootfs / "home") == (100_000, 100_000)  # made implicitly: root's
    assert owner(rootfs / "home" / "user") == (101_000, 101_000)
    assert owner(rootfs / "home" / "user" / "f") == (101_000, 100_100)
    assert owner(rootfs / "home" / "user" / "l") == (101_000, 101_000)
    assert owner(rootfs / "etc" / "shadow") == (100_000, 100_042)


@pytest.mark.skipif(not ROOT, reason="setting owners needs root")
def test_a_setuid_file_keeps_its_bit_after_the_shifted_chown(tmp_path: Path) -> None:
    rootfs = unpacked(ImageBuilder().layer(files={"su": File(b"x", mode=0o4755)}), tmp_path, uid_shift=100_000)

    info = (rootfs / "su").stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (100_000, 0o4755)


def test_ids_beyond_a_sandbox_range_are_refused_when_shifting(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(files={"f": File(b"x", gid=70_000)})

    refused(builder, tmp_path, "entry 'f' is owned by gid 70000, outside the 65536 ids", uid_shift=100_000)


@pytest.mark.skipif(not ROOT, reason="security.capability needs CAP_SETFCAP")
def test_file_capabilities_survive_and_follow_the_shift(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(
        files={
            "ping": File(b"p", mode=0o755, xattrs={"security.capability": CAP_NET_RAW_V2}),
            "tagged": File(b"t", xattrs={"user.origin": b"image", "trusted.overlay.opaque": b"y"}),
        }
    )

    plain = unpacked(builder, tmp_path / "plain")
    shifted = unpacked(builder, tmp_path / "shifted", uid_shift=100_000)

    assert os.getxattr(plain / "ping", "security.capability") == CAP_NET_RAW_V2
    v3 = os.getxattr(shifted / "ping", "security.capability")
    assert (v3[:4], v3[4:20], int.from_bytes(v3[20:], "little")) == (
        (0x03000000).to_bytes(4, "little"),
        CAP_NET_RAW_V2[4:],
        100_000,
    )
    assert os.getxattr(plain / "tagged", "user.origin") == b"image"
    assert "trusted.overlay.opaque" not in os.listxattr(plain / "tagged")


def test_entries_change_kind_across_layers(tmp_path: Path) -> None:
    builder = (
        ImageBuilder()
        .layer(files={"was-file": "f", "was-dir/inner": "i", "was-link-target": "t"}, symlinks={"was-link": "x"})
        .layer(
            dirs={"was-file": 0o755, "was-link": 0o700},
            files={"was-dir": "now a file", "was-file/inner": "in"},
        )
    )

    rootfs = unpacked(builder, tmp_path)

    assert (rootfs / "was-file" / "inner").read_text() == "in"
    assert (rootfs / "was-dir").read_text() == "now a file"
    assert (rootfs / "was-link").is_dir() and not (rootfs / "was-link").is_symlink()


def test_device_nodes_and_fifos_are_skipped_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder = ImageBuilder().layer(files={"dev/keep": "k"}, fifos=["dev/pipe"], devices={"dev/null": (1, 3)})

    with caplog.at_level(logging.INFO, logger="hutch_node_agent.images"):
        rootfs = unpacked(builder, tmp_path)

    assert sorted(p.name for p in (rootfs / "dev").iterdir()) == ["keep"]
    assert "skipped 2 entries" in caplog.text and "dev/null" in caplog.text


def test_the_rootfs_must_start_empty(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "stray").write_text("")
    image = images.read_image(sample().write_oci_layout(tmp_path / "image"))

    with pytest.raises(errors.FailedPrecondition):
        images.unpack(image, tmp_path / "rootfs")


# Integrity --------------------------------------------------------------------------------------


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_a_layer_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    layout = sample().write_oci_layout(tmp_path / "image", compression="none")
    digest = json.loads(blob_path(layout, images.read_image(layout).digest).read_bytes())["layers"][1]["digest"]
    path = blob_path(layout, digest)
    data = bytearray(path.read_bytes())
    data[600] ^= 1
    path.write_bytes(bytes(data))

    with pytest.raises(errors.InvalidArgument, match=r"layer 2 \(sha256:\w{12}\) does not match its digest"):
        images.read_image(layout)


def test_a_config_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    layout = sample().write_oci_layout(tmp_path / "image")
    manifest = json.loads(blob_path(layout, images.read_image(layout).digest).read_bytes())
    path = blob_path(layout, manifest["config"]["digest"])
    path.write_bytes(path.read_bytes().replace(b"/srv", b"/etc"))

    with pytest.raises(errors.InvalidArgument, match="does not match its digest"):
        images.read_image(layout)


def test_a_classic_docker_layer_is_checked_against_its_diff_id(tmp_path: Path) -> None:
    archive = sample().write_docker_save(tmp_path / "image.tar")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(archive, "w") as tar:
        for member, data in members:
            if member.name.endswith("layer.tar") and data is not None:
                data = data.replace(b"sample", b"tamper")
            tar.addfile(member, io.BytesIO(data) if data is not None else None)

    with pytest.raises(errors.InvalidArgument, match="does not match the config's diff_id"):
        images.read_image(archive)


def test_a_compressed_layer_is_checked_against_its_diff_id_while_unpacking(tmp_path: Path) -> None:
    layout = ImageBuilder().layer(files={"a": "1"}).write_oci_layout(tmp_path / "image")
    index = json.loads((layout / "index.json").read_text())
    manifest_path = blob_path(layout, index["manifests"][0]["digest"])
    manifest = json.loads(manifest_path.read_bytes())
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    manifest["config"] = rewrite_blob(layout, manifest["config"], json.dumps(config).encode())
    index["manifests"][0] = rewrite_blob(layout, index["manifests"][0], json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps(index))
    image = images.read_image(layout)

    with pytest.raises(errors.InvalidArgument, match="does not unpack to its diff_id"):
        images.unpack(image, tmp_path / "rootfs")


def rewrite_blob(layout: Path, descriptor: dict[str, object], data: bytes) -> dict[str, object]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    blob_path(layout, digest).write_bytes(data)
    return {**descriptor, "digest": digest, "size": len(data)}


def test_a_layer_changed_after_reading_is_caught_while_unpacking(tmp_path: Path) -> None:
    layout = sample().write_oci_layout(tmp_path / "image")
    image = images.read_image(layout)
    path = image.layers[0].blob.path
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=9, mtime=1))

    with pytest.raises(errors.InvalidArgument, match="changed in the archive since it was read"):
        images.unpack(image, tmp_path / "rootfs")


def test_a_missing_blob_is_named(tmp_path: Path) -> None:
    layout = sample().write_oci_layout(tmp_path / "image")
    blob_path(layout, images.read_image(layout).layers[0].digest).unlink()

    with pytest.raises(errors.InvalidArgument, match=r"layer 1 of manifest sha256:\w{12} \(sha256:\w{64}\) is missing"):
        images.read_image(layout)


def test_corrupt_compressed_bytes_are_refused(tmp_path: Path) -> None:
    garbage = b"\x1f\x8b" + b"\x00" * 100
    builder = ImageBuilder().tar_layer(garbage, compression="none")
    archive = builder.write_oci_layout(tmp_path / "image")
    # The layer is labelled uncompressed but starts like gzip.
    with pytest.raises(errors.InvalidArgument, match="is labelled .* but its bytes are gzip"):
        images.read_image(archive)


def test_archives_that_are_not_images_say_what_they_lack(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "image.tar.gz").write_bytes(gzip.compress(b"x"))

    with pytest.raises(errors.InvalidArgument, match="neither a docker save archive"):
        images.read_image(tmp_path / "empty")
    with pytest.raises(errors.InvalidArgument, match="decompress it first"):
        images.read_image(tmp_path / "image.tar.gz")


def test_docker_save_layers_stored_once_and_linked_are_followed(tmp_path: Path) -> None:
    archive = ImageBuilder().layer(files={"a": "1"}).layer(files={"a": "1"}).write_docker_save(tmp_path / "image.tar")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]
    layers = sorted(m.name for m, _ in members if m.name.endswith("layer.tar"))
    json_manifest = json.loads(next(data for m, data in members if m.name == "manifest.json") or b"")
    first = json_manifest[0]["Layers"][0]
    second = next(name for name in layers if name != first)
    # Older Docker writes a layer shared by two images once and links the other path to it.
    with tarfile.open(archive, "w") as tar:
        for member, data in members:
            if member.name == second:
                link = tarfile.TarInfo(second)
                link.type, link.linkname = tarfile.SYMTYPE, f"../{first}"
                tar.addfile(link)
            else:
                tar.addfile(member, io.BytesIO(data) if data is not None else None)

    image = images.read_image(archive)

    assert image.layers[0].blob == image.layers[1].blob
    images.unpack(image, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / "a").read_text() == "1"


def test_a_docker_save_folder_cannot_name_files_outside_it(tmp_path: Path, outside: Path) -> None:
    archive = sample().write_docker_save(tmp_path / "image.tar")
    folder = tmp_path / "unpacked-save"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[0]["Layers"][0] = "../outside/secret"
    (folder / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(errors.InvalidArgument, match="is not a file in the archive"):
        images.read_image(folder)


# Multi-platform indexes -------------------------------------------------------------------------


def platforms(*names: str) -> list[ImageBuilder]:
    return [ImageBuilder(architecture=name).layer(files={"arch": name}).config(env=[f"ARCH={name}"]) for name in names]


@pytest.mark.parametrize("nested", [True, False])
def test_linux_amd64_is_picked_from_a_multi_platform_index(tmp_path: Path, nested: bool) -> None:
    layout = write_multiarch_layout(
        tmp_path / "image", platforms("arm64", "amd64", "s390x"), nested=nested, attestation=True
    )

    image = images.read_image(layout)
    images.unpack(image, tmp_path / "rootfs")

    assert (image.platform, image.config.env) == ("linux/amd64", ("ARCH=amd64",))
    assert (tmp_path / "rootfs" / "arch").read_text() == "amd64"
    assert images.read_image(layout, platform="linux/arm64").config.env == ("ARCH=arm64",)


def test_the_only_image_is_taken_whatever_its_platform(tmp_path: Path) -> None:
    layout = write_multiarch_layout(tmp_path / "image", platforms("arm64"), attestation=True, tar=True)

    assert images.read_image(layout).platform == "linux/arm64"


def test_an_index_without_the_platform_lists_what_it_has(tmp_path: Path) -> None:
    layout = write_multiarch_layout(tmp_path / "image", platforms("arm64", "s390x"))

    with pytest.raises(errors.InvalidArgument, match=r"no image for linux/amd64 \(it has: linux/arm64, linux/s390x\)"):
        images.read_image(layout)


def test_two_images_for_one_platform_are_ambiguous(tmp_path: Path) -> None:
    layout = write_multiarch_layout(tmp_path / "image", platforms("amd64", "amd64"), nested=False)

    with pytest.raises(errors.InvalidArgument, match="holds 2 images for linux/amd64"):
        images.read_image(layout)


# Attacks: nothing may be written outside the rootfs --------------------------------------------


def test_absolute_names_land_inside_the_rootfs(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().raw_layer([entry(f"{outside}/secret", data="pwned"), entry("/etc/passwd", data="img")])

    rootfs = unpacked(builder, tmp_path)

    assert snapshot(outside) == before
    assert (rootfs / outside.relative_to("/") / "secret").read_text() == "pwned"
    assert (rootfs / "etc" / "passwd").read_text() == "img"


@pytest.mark.parametrize("name", ["../outside/secret", "a/../../outside/secret", "./../x"])
def test_dot_dot_names_are_refused(tmp_path: Path, outside: Path, name: str) -> None:
    before = snapshot(outside)

    message = refused(ImageBuilder().raw_layer([entry(name, data="pwned")]), tmp_path, "has a '..' component")

    assert message.startswith("layer 1 (sha256:")
    assert snapshot(outside) == before


@pytest.mark.parametrize("target", ["../../..", "../outside", "x/../../../outside"])
def test_writing_through_a_link_that_climbs_out_is_refused(tmp_path: Path, outside: Path, target: str) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().layer(dirs={"x": 0o755}, symlinks={"evil": target}).layer(files={"evil/secret": "pwned"})

    message = refused(builder, tmp_path, "would be written through a symbolic link")

    assert "entry 'evil/secret'" in message and "that leaves the image" in message
    assert message.startswith("layer 2 (sha256:")
    assert snapshot(outside) == before


def test_writing_through_an_absolute_link_to_the_host_is_refused(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().layer(symlinks={"etc": str(outside / "etc")}).layer(files={"etc/passwd": "pwned"})

    message = refused(builder, tmp_path, "whose target is not a directory in the image")

    assert f"'etc' -> '{outside}/etc'" in message
    assert snapshot(outside) == before


def test_a_link_and_a_write_through_it_in_one_layer_are_refused(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().raw_layer(
        [
            entry("x", type=tarfile.SYMTYPE, linkname="../../../../../../../../.."),
            entry(f"x{outside}/secret", data="pwned"),
        ]
    )

    refused(builder, tmp_path, "that leaves the image")
    assert snapshot(outside) == before


def test_a_link_to_the_image_root_stays_inside(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = (
        ImageBuilder()
        .layer(dirs={"etc": 0o755}, symlinks={"root-link": "/"})
        .layer(files={"root-link/etc/passwd": "inside"})
    )

    rootfs = unpacked(builder, tmp_path)

    assert (rootfs / "etc" / "passwd").read_text() == "inside"
    assert snapshot(outside) == before


def test_a_file_replaces_a_link_instead_of_writing_through_it(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = (
        ImageBuilder()
        .layer(symlinks={"secret": str(outside / "secret"), "dir": str(outside / "etc")})
        .layer(files={"secret": File(b"pwned", mode=0o777)}, dirs={"dir": 0o777})
    )

    rootfs = unpacked(builder, tmp_path)

    assert (rootfs / "secret").read_text() == "pwned" and not (rootfs / "secret").is_symlink()
    assert (rootfs / "dir").is_dir() and not (rootfs / "dir").is_symlink()
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "link",
    [
        "../outside/secret",  # refused by name
        "OUTSIDE/secret",  # absolute: resolves inside the image, where nothing is
        "host/secret",  # through a link that leaves the image
    ],
)
def test_hard_links_cannot_reach_outside(tmp_path: Path, outside: Path, link: str) -> None:
    before = snapshot(outside)
    builder = (
        ImageBuilder()
        .layer(symlinks={"host": "../../../../../../../../.."})
        .layer(hardlinks={"stolen": link.replace("OUTSIDE", str(outside))})
    )

    refused(builder, tmp_path, "entry 'stolen'")
    assert snapshot(outside) == before
    assert not (tmp_path / "rootfs" / "stolen").exists()


def test_hard_links_to_links_link_the_link_itself(tmp_path: Path, outside: Path) -> None:
    builder = ImageBuilder().layer(symlinks={"l": str(outside / "secret")}).layer(hardlinks={"h": "l"})

    rootfs = unpacked(builder, tmp_path)

    assert os.readlink(rootfs / "h") == str(outside / "secret")
    assert (rootfs / "h").lstat().st_ino == (rootfs / "l").lstat().st_ino


@pytest.mark.parametrize("marker", [".wh.secret", ".wh..wh..opq"])
def test_whiteouts_cannot_delete_through_links(tmp_path: Path, outside: Path, marker: str) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().layer(symlinks={"l": str(outside)}).raw_layer([entry(f"l/{marker}", data="")])

    refused(builder, tmp_path, "whose target is not a directory in the image")
    assert snapshot(outside) == before


def test_a_whiteout_of_a_link_removes_the_link_only(tmp_path: Path, outside: Path) -> None:
    before = snapshot(outside)
    builder = ImageBuilder().layer(symlinks={"l": str(outside)}).layer(whiteouts=["l"])

    rootfs = unpacked(builder, tmp_path)

    assert list(rootfs.iterdir()) == []
    assert snapshot(outside) == before


def test_link_loops_are_refused(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(symlinks={"a": "b", "b": "a"}).layer(files={"a/x": "1"})

    refused(builder, tmp_path, "too many symbolic links")


# Limits -----------------------------------------------------------------------------------------


def test_a_file_past_max_bytes_is_refused_before_it_is_written(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(files={"small": b"x" * 100, "big": b"x" * 10_000})

    message = refused(builder, tmp_path, "entry 'big' is 10000 bytes, more than is left of max_bytes", max_bytes=8000)
    assert not (tmp_path / "rootfs" / "big").exists()
    assert message.startswith("layer 1 (sha256:")


def test_a_compression_bomb_stops_at_max_bytes(tmp_path: Path) -> None:
    builder = ImageBuilder().tar_layer(b"\0" * (64 << 20), compression="gzip")

    refused(builder, tmp_path, "unpacks to more than max_bytes", max_bytes=1 << 20)


def test_uncompressed_layers_over_max_bytes_are_refused_up_front(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(files={"a": b"x" * 4096})
    image = images.read_image(builder.write_oci_layout(tmp_path / "image", compression="none"))

    with pytest.raises(errors.InvalidArgument, match="uncompressed layers alone are"):
        images.unpack(image, tmp_path / "rootfs", max_bytes=4096)
    assert list((tmp_path / "rootfs").iterdir()) == []


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    builder = ImageBuilder().layer(files={f"f{i}": "" for i in range(50)})

    refused(builder, tmp_path, "past max_entries (20 entries)", max_entries=20)


def test_huge_tar_headers_are_refused(tmp_path: Path) -> None:
    info, data = entry("x", data="1")
    info.pax_headers = {"comment": "y" * (5 << 20)}
    builder = ImageBuilder().raw_layer([(info, data)])

    refused(builder, tmp_path, "tar headers of more than")


def test_overlong_names_are_refused(tmp_path: Path) -> None:
    refused(ImageBuilder().raw_layer([entry("a/" * 3000 + "x", data="")]), tmp_path, "name longer than 4096")
