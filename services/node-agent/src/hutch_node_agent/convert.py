"""Conversions between protobuf messages and the node-agent's own types."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from hutch.events.v1 import sandbox_pb2 as ev
from hutch.v1 import files_pb2, templates_pb2
from hutch_node_agent.domain import SandboxRequest
from hutch_node_agent.templates import Template

_FILE_TYPES = {
    "file": files_pb2.FILE_TYPE_FILE,
    "dir": files_pb2.FILE_TYPE_DIRECTORY,
    "symlink": files_pb2.FILE_TYPE_SYMLINK,
    "other": files_pb2.FILE_TYPE_OTHER,
}


def request_from_spec(spec: ev.SandboxSpec) -> SandboxRequest:
    return SandboxRequest(
        sandbox_id=spec.sandbox_id,
        tenant_id=spec.tenant_id,
        name=spec.name,
        template=spec.template,
        cpu_millis=spec.resources.cpu_millis,
        memory_mb=spec.resources.memory_mb,
        envs=dict(spec.envs),
        metadata=dict(spec.metadata),
        timeout_seconds=spec.timeout_seconds,
        isolation=spec.isolation or "container",
        snapshot_id=spec.snapshot_id,
        incarnation_id=spec.incarnation if spec.incarnation != spec.snapshot_id else "",
        network={
            "allow": list(spec.network.allow),
            "deny": list(spec.network.deny),
            "passthrough": list(spec.network.passthrough),
        },
        auto_sleep_after_s=spec.auto_sleep_after_seconds,
        memory_ceiling_mb=spec.memory_ceiling_mb,
    )


def file_info(info: dict[str, Any]) -> files_pb2.FileInfo:
    modified = Timestamp()
    modified.FromNanoseconds(int(float(info.get("mtime", 0)) * 1e9))
    return files_pb2.FileInfo(
        path=info["path"],
        name=info.get("name", ""),
        type=_FILE_TYPES.get(info.get("type", ""), files_pb2.FILE_TYPE_OTHER),
        size=int(info.get("size", 0)),
        mode=int(info.get("mode", 0)),
        modified_at=modified,
        owner=str(info.get("owner", "")),
        group=str(info.get("group", "")),
        symlink_target=info.get("symlink_target", ""),
        sha256=str(info.get("sha256") or ""),
    )


def template_message(key: str, template: Template) -> templates_pb2.Template:
    """A template as the public API shows it (the name without the tenant part of the key)."""
    folder_stat = template.rootfs.parent.stat()
    created = Timestamp()
    created.FromNanoseconds(folder_stat.st_mtime_ns)
    return templates_pb2.Template(
        name=key.rpartition("/")[2],
        builtin="/" not in key,
        source=template.source,
        env=list(template.env),
        workdir=template.workdir,
        user=template.user,
        size_bytes=template.size_bytes,
        created_at=created,
    )
