"""Large file transfers through the Python SDK against a whole local stack: 2 GiB each way, streamed
with bounded memory in the SDK, the gateway and the node-agent, and checked end to end by SHA-256.

The session's shared stack gives each sandbox 512 MiB of disk, so this module starts a stack of its
own whose sandboxes may hold the file. It is a second node-agent on this host, so it gets a node id,
a cgroup parent and an address pool of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import NotFoundError, Sandbox

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MiB = 1024 * 1024
SIZE = 2 * 1024 * MiB
# Most the SDK's process, the gateway or the node-agent may grow while moving the file: a fraction of
# its size, so anything that holds the whole file (or a large share of it) fails the test.
MAX_GROWTH_BYTES = 300 * MiB
_ROOMY_SETTINGS = {
    "HUTCH_NODE__DISK_QUOTA_MB": str(SIZE // MiB + 1024),
    "HUTCH_NODE__VOLUME_SIZE_GB": "16",
    "HUTCH_NODE__SANDBOX_NETWORK": "100.98.0.0/16",
    "HUTCH_NODE__CGROUP_PARENT": "hutch-transfers",
}


@pytest.fixture(scope="module")
def roomy_stack(server_tmp_root: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    """A stack of this module's own; yields (endpoint, API key, {component: pid})."""
    from hutch.local import stack
    from hutch.local.stack import StackOptions
    from hutch.testing.local_stack import missing_services

    missing = missing_services()
    if missing:
        pytest.skip(f"the local stack needs services that are not installed: {', '.join(missing)}")
    home = Path(tempfile.mkdtemp(prefix="hutch-roomy-", dir=server_tmp_root))
    templates = os.environ.get("HUTCH_NODE__TEMPLATES_DIR")
    options = StackOptions(
        home=home,
        ports=dict.fromkeys(stack.default_ports(), 0),
        durable=False,
        startup_timeout_s=180,
        node_id="transfers-1",
        templates_dir=Path(templates) if templates else stack.DEFAULT_TEMPLATES_DIR,
    )
    saved = {key: os.environ.get(key) for key in _ROOMY_SETTINGS}
    os.environ.update(_ROOMY_SETTINGS)
    try:
        result = stack.up(options, detach=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        assert result.state.endpoint is not None
        pids = {name: result.state.component(name).pid for name in ("gateway", "node-agent")}
        yield result.state.endpoint, result.api_key, {name: pid for name, pid in pids.items() if pid}
    finally:
        stack.down(home)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


@contextlib.contextmanager
def peak_growth(pids: dict[str, int]) -> Iterator[dict[str, int]]:
    """Samples the processes' resident memory while the block runs; yields {name: peak growth in bytes}."""
    baseline = {name: _rss(pid) for name, pid in pids.items()}
    growth = dict.fromkeys(pids, 0)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for name, pid in pids.items():
                growth[name] = max(growth[name], _rss(pid) - baseline[name])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield growth
    finally:
        done.set()
        sampler.join()


def _own_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _generate(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as sink:
        for _ in range(size // (4 * MiB)):
            chunk = os.urandom(4 * MiB)
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_two_gibibytes_up_and_down_with_bounded_memory(
    roomy_stack: tuple[str, str, dict[str, int]], tmp_path: Path
) -> None:
    endpoint, api_key, pids = roomy_stack
    assert "node-agent" in pids
    local = tmp_path / "big.bin"
    digest = _generate(local, SIZE)
    box = Sandbox.create(api_key=api_key, endpoint=endpoint, request_timeout=None)
    try:
        sent: list[int] = []
        own_before = _own_peak_rss()
        with peak_growth(pids) as upload_growth:
            info = box.files.upload(local, "/root/big.bin", on_progress=sent.append)
        assert (info.size, info.path) == (SIZE, "/root/big.bin")
        assert sent[-1] == SIZE and sent == sorted(sent)
        remote = box.commands.run("sha256sum /root/big.bin", timeout=600).stdout.split()[0]
        assert remote == digest

        received: list[int] = []
        target = tmp_path / "downloaded.bin"
        with peak_growth(pids) as download_growth:
            fetched = box.files.download("/root/big.bin", target, on_progress=received.append)
        assert fetched.size == SIZE and received[-1] == SIZE
        assert target.stat().st_size == SIZE
        assert _hash(target) == digest
        assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".hutch-partial")] == []

        for name in pids:
            for direction, growth in (("upload", upload_growth), ("download", download_growth)):
                assert growth[name] < MAX_GROWTH_BYTES, (
                    f"{name} grew by {growth[name] / MiB:.0f} MiB during the {direction}"
                )
        assert _own_peak_rss() - own_before < MAX_GROWTH_BYTES
    finally:
        with contextlib.suppress(NotFoundError):
            box.kill()
        box.close()


def test_a_failed_download_leaves_the_target_untouched(
    roomy_stack: tuple[str, str, dict[str, int]], tmp_path: Path
) -> None:
    endpoint, api_key, _ = roomy_stack
    box = Sandbox.create(api_key=api_key, endpoint=endpoint)
    try:
        target = tmp_path / "keep.txt"
        target.write_text("old content")
        with pytest.raises(NotFoundError):
            box.files.download("/root/missing.bin", target)
        assert target.read_text() == "old content"
        assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]
    finally:
        box.kill()
        box.close()


def test_the_sandbox_reports_the_checksum_of_what_it_received(
    roomy_stack: tuple[str, str, dict[str, int]], tmp_path: Path
) -> None:
    endpoint, api_key, _ = roomy_stack
    box = Sandbox.create(api_key=api_key, endpoint=endpoint)
    try:
        data = os.urandom(3 * MiB + 5)
        sent: list[int] = []
        info = box.files.write("/root/data.bin", data, on_progress=sent.append)
        assert sent == [MiB, 2 * MiB, 3 * MiB, 3 * MiB + 5]
        # The SDK has compared it with what it sent already; the caller can see it too.
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert box.files.read("/root/data.bin", format="bytes") == data
        streamed = b"".join(box.files.read("/root/data.bin", format="stream"))
        assert streamed == data
    finally:
        box.kill()
        box.close()
