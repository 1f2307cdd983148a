"""Quota group ids, limit arguments and the mount lookup behind the sandbox volume, without a kernel."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hutch_node_agent.quota import (
    MountEntry,
    mount_containing,
    parse_mountinfo,
    qgroup_id,
    qgroup_limit_args,
    subvolume_ids_in_search_result,
)

# -- quota group ids -------------------------------------------------------------------------------


def test_a_subvolume_quota_group_is_its_subvolume_id_at_level_zero() -> None:
    assert qgroup_id(256) == 256
    assert qgroup_id(257) == 257


def test_the_level_sits_in_the_top_sixteen_bits() -> None:
    assert qgroup_id(7, level=1) == (1 << 48) | 7
    assert qgroup_id(2**48 - 1, level=2**16 - 1) == 2**64 - 1


@pytest.mark.parametrize(("subvolume", "level"), [(0, 0), (-1, 0), (2**48, 0), (5, -1), (5, 2**16)])
def test_ids_outside_the_packing_are_refused(subvolume: int, level: int) -> None:
    with pytest.raises(ValueError):
        qgroup_id(subvolume, level)


# -- limit arguments -------------------------------------------------------------------------------


def test_a_limit_caps_the_referenced_bytes_of_the_group() -> None:
    args = qgroup_limit_args(qgroup_id(300), 20 * 2**20)

    assert len(args) == 48  # struct btrfs_ioctl_qgroup_limit_args
    group, flags, max_referenced, max_exclusive, *_ = struct.unpack("=6Q", args)
    assert (group, flags, max_referenced, max_exclusive) == (300, 1, 20 * 2**20, 0)


def test_a_zero_limit_clears_the_cap() -> None:
    _, flags, max_referenced, *_ = struct.unpack("=6Q", qgroup_limit_args(300, 0))
    assert (flags, max_referenced) == (1, 2**64 - 1)


@pytest.mark.parametrize("limit", [-1, 2**64 - 1])
def test_limits_outside_the_field_are_refused(limit: int) -> None:
    with pytest.raises(ValueError):
        qgroup_limit_args(300, limit)


# -- mounts ----------------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /proc rw,nosuid - proc proc rw
41 22 7:0 / /var/lib/hutch/node/volume rw,noatime shared:5 master:2 - btrfs /dev/loop0 rw,discard=async
42 22 0:40 / /var/lib/hutch/node/volume2 rw - tmpfs tmpfs rw
43 22 0:41 / /srv/with\\040space rw - xfs /dev/sdb1 rw
44 41 0:42 / /var/lib/hutch/node/volume rw - tmpfs none rw
"""


def test_mountinfo_fields_are_read_past_any_optional_fields() -> None:
    entries = parse_mountinfo(MOUNTINFO)

    assert entries[2] == MountEntry(Path("/var/lib/hutch/node/volume"), "btrfs", "/dev/loop0")
    assert entries[0] == MountEntry(Path("/"), "ext4", "/dev/vda")


def test_mountinfo_escapes_are_decoded() -> None:
    assert parse_mountinfo(MOUNTINFO)[4].mount_point == Path("/srv/with space")


def test_a_path_lies_on_the_deepest_mount_above_it() -> None:
    entries = parse_mountinfo(MOUNTINFO)[:5]

    on = mount_containing(Path("/var/lib/hutch/node/volume/sandboxes/sb-1"), entries)
    assert on is not None and on.fstype == "btrfs"
    on = mount_containing(Path("/var/lib/hutch/node"), entries)
    assert on is not None and on.fstype == "ext4"


def test_a_sibling_with_a_common_prefix_is_not_a_parent() -> None:
    on = mount_containing(Path("/var/lib/hutch/node/volume22"), parse_mountinfo(MOUNTINFO))
    assert on is not None and on.mount_point == Path("/")


def test_the_last_of_stacked_mounts_is_the_one_in_use() -> None:
    on = mount_containing(Path("/var/lib/hutch/node/volume"), parse_mountinfo(MOUNTINFO))
    assert on is not None and on.fstype == "tmpfs"


def test_no_mounts_means_no_answer() -> None:
    assert mount_containing(Path("/x"), []) is None


def _search_item(objectid: int, item_type: int, offset: int, data: bytes) -> bytes:
    # struct btrfs_ioctl_search_header, then the item itself
    return struct.pack("=3Q2I", 7, objectid, offset, item_type, len(data)) + data


def test_a_tree_search_result_yields_subvolume_root_items_only() -> None:
    result = (
        _search_item(5, 132, 0, b"x" * 439)  # the top level: not a sandbox folder
        + _search_item(256, 132, 0, b"x" * 439)
        + _search_item(256, 144, 5, b"ref")  # a back reference of subvolume 256, not a root
        + _search_item(300, 132, 0, b"x" * 439)
        + b"\0" * 64  # what the buffer holds past the items
    )

    ids, last = subvolume_ids_in_search_result(result, 4)

    assert ids == [256, 300]
    assert last == (300, 132, 0)


def test_an_empty_tree_search_result_has_no_last_key() -> None:
    assert subvolume_ids_in_search_result(b"\0" * 64, 0) == ([], None)
