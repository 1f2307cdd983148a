"""Where a node-agent keeps things on disk.

<root>/sandboxes/<id>/      one folder per sandbox
    sandbox.json            the node's record of it (survives node-agent restarts)
    config.json             its OCI runtime configuration; the folder is the OCI bundle
    upper/ work/            the overlay's private writable layer
    rootfs/                 the overlay mount: the sandbox's /
    run/                    mounted at /.hutch/run inside: the supervisor's socket
    init.log                the supervisor's own output
<layers>/<id>/               its writable layer (upper/, work/): a quota-limited btrfs subvolume
<frozen>/<snapshot id>/      a snapshot's frozen layer (read-only subvolume) kept on this node
<root>/snapshots/<snapshot id>/  that snapshot's record and, for gVisor, its checkpoint image
<root>/runtime/<hash>/      the supervisor's private Python runtime, shared by all sandboxes
<root>/crun/                crun's state folder (private to this node-agent)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hutch_node_agent.supervisor.protocol import SOCKET_NAME


@dataclass(frozen=True)
class SandboxPaths:
    dir: Path
    layer: Path

    @property
    def record(self) -> Path:
        return self.dir / "sandbox.json"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def upper(self) -> Path:
        return self.layer / "upper"

    @property
    def work(self) -> Path:
        return self.layer / "work"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def run(self) -> Path:
        return self.dir / "run"

    @property
    def socket(self) -> Path:
        return self.run / SOCKET_NAME

    @property
    def log(self) -> Path:
        return self.dir / "init.log"


@dataclass(frozen=True)
class NodeLayout:
    root: Path
    # Where writable layers live: the quota volume's folder, or <root>/layers without quotas.
    layers_root: Path | None = None

    @property
    def layers(self) -> Path:
        return self.layers_root or self.root / "layers"

    @property
    def frozen_layers(self) -> Path:
        """Snapshots' frozen layers: beside the writable ones, on the same volume when there is one,
        so freezing and cloning are snapshots of subvolumes rather than copies."""
        return self.layers_root.parent / "snapshots" if self.layers_root else self.root / "frozen"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def staging(self) -> Path:
        """Downloads in progress (on the volume, so a finished one becomes a frozen layer in place)."""
        return self.layers_root.parent / "staging" if self.layers_root else self.root / "staging"

    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"

    @property
    def runtime_cache(self) -> Path:
        return self.root / "runtime"

    def runtime_state(self, isolation_class: str) -> Path:
        return self.root / "runtimes" / isolation_class

    def sandbox(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths(self.sandboxes / sandbox_id, self.layers / sandbox_id)

    def create(self) -> None:
        for folder in (
            self.sandboxes, self.layers, self.runtime_cache, self.root / "runtimes", self.frozen_layers,
            self.snapshots, self.staging,
        ):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
