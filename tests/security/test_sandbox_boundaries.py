"""Attacks from inside a container sandbox, and against the platform's own boundaries.

Each test asserts what the attacker saw, not only that a command failed, and that the platform and
the other sandboxes were not affected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hutch import CommandExitError, HutchError, Sandbox, TimeoutError
from hutch.core.grpc_runtime import internal_metadata
from hutch.internal.v1 import node_agent_pb2, node_agent_pb2_grpc
from hutch.v1 import files_pb2, files_pb2_grpc

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def connection(local_stack: Any) -> dict[str, str]:
    return {"api_key": local_stack.api_key, "endpoint": local_stack.endpoint}


@pytest.fixture(scope="module")
def victim(connection: dict[str, str]) -> Iterator[Sandbox]:
    """A bystander sandbox that must stay healthy whatever the attacker does."""
    sandbox = Sandbox.create(memory_mb=256, **connection)
    sandbox.files.write("/root/secret.txt", "victim's data")
    yield sandbox
    sandbox.kill()
    sandbox.close()


@pytest.fixture(params=["container", "gvisor"])
def attacker(request: pytest.FixtureRequest, connection: dict[str, str]) -> Iterator[Sandbox]:
    """The sandbox the attack runs in, once per isolation class."""
    sandbox = Sandbox.create(memory_mb=256, cpu=1, isolation=request.param, **connection)
    yield sandbox
    if sandbox.is_running():
        sandbox.kill()
    sandbox.close()


def sh(sandbox: Sandbox, cmd: str, **kwargs: Any) -> tuple[str, int]:
    try:
        result = sandbox.commands.run(cmd, **kwargs)
    except CommandExitError as exc:
        return exc.stdout + exc.stderr, exc.exit_code
    return result.stdout + result.stderr, result.exit_code


def component_port(local_stack: Any, name: str) -> int:
    address = next(c.address for c in local_stack.status() if c.name == name)
    return int(address.rsplit(":", 1)[1].split("/")[0])


def assert_victim_untouched(victim: Sandbox) -> None:
    assert victim.files.read("/root/secret.txt") == "victim's data"
    assert victim.commands.run("echo alive").stdout == "alive\n"


def test_host_processes_are_invisible_and_unsignalable(attacker: Sandbox, victim: Sandbox) -> None:
    out, _ = sh(attacker, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "hutch-node-agent" not in out and "postgres" not in out and "nats-server" not in out
    # Python rather than ls: GNU ls's statx() of /proc fails under this gVisor release.
    pids, _ = sh(attacker, "python3 -c \"import os; print(sum(n.isdigit() for n in os.listdir('/proc')))\"")
    assert int(pids) < 10  # the supervisor, the shell and its helpers: nothing of the host
    assert_victim_untouched(victim)


def test_killing_its_own_init_harms_only_the_sandbox(attacker: Sandbox, victim: Sandbox) -> None:
    if attacker.get_info().isolation == "container":
        # Linux ignores SIGKILL sent to a PID namespace's init from inside it.
        out, _ = sh(attacker, "kill -9 1; echo sent")
        assert "sent" in out
        assert attacker.commands.run("echo supervisor-alive").stdout == "supervisor-alive\n"
    else:
        # gVisor's kernel delivers it: the sandbox ends itself, and the node reports that.
        with pytest.raises(HutchError):
            attacker.commands.run("kill -9 1; sleep 5")
        wait_for_state(attacker, "killed")
    assert_victim_untouched(victim)


def test_proc_1_root_is_the_sandbox_itself(attacker: Sandbox) -> None:
    # PID 1 is the sandbox's supervisor: its root is the sandbox's own (gVisor refuses the walk).
    out, code = sh(attacker, "cat /proc/1/root/etc/hostname")
    assert out.strip() == attacker.id or (code != 0 and "denied" in out)
    out, _ = sh(attacker, "python3 -c \"import os; print(os.path.exists('/proc/1/root/var/lib/hutch'))\"")
    assert out.strip() == "False"


def test_the_hosts_loopback_services_are_unreachable(attacker: Sandbox, local_stack: Any) -> None:
    for name in ("postgres", "nats", "gateway", "node-agent"):
        port = component_port(local_stack, name)
        probe = (
            "import socket,sys\n"
            f"s=socket.socket(); s.settimeout(2)\n"
            f"try:\n s.connect(('127.0.0.1',{port})); print('CONNECTED')\n"
            "except OSError as e: print(type(e).__name__)\n"
        )
        out, _ = sh(attacker, f'python3 -c "{probe}"')
        assert out.strip() == "ConnectionRefusedError", (name, out)
    # Loopback and the sandbox's own link to the node (whose firewall sends everything to the
    # egress-proxy); no other interface of the host is visible.
    out, _ = sh(attacker, "ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1")
    assert sorted(out.split()) == ["eth0", "lo"]


def test_mounting_raw_sockets_and_kernel_modules_are_refused(attacker: Sandbox) -> None:
    # mount(2) itself (the base template has no mount binary): EPERM is errno 1.
    out, _ = sh(
        attacker,
        'python3 -c "import ctypes; c = ctypes.CDLL(None, use_errno=True); '
        "print(c.mount(b'none', b'/mnt', b'tmpfs', 0, None), ctypes.get_errno())\"",
    )
    assert out.split() == ["-1", "1"]
    out, _ = sh(
        attacker,
        "python3 -c \"import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print('RAW')\n"
        "except PermissionError: print('denied')\"",
    )
    assert out.strip() == "denied"
    # Masked kernel files read as empty (or do not exist on this kernel).
    out, _ = sh(attacker, "cat /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug 2>/dev/null | wc -c")
    assert out.strip() == "0"
    out, code = sh(attacker, "echo 3 > /proc/sys/vm/drop_caches 2>&1")
    assert code != 0 and ("read-only" in out.lower() or "not permitted" in out.lower())
    # init_module(2) (syscall 175 on x86-64) without CAP_SYS_MODULE: EPERM, or ENOSYS on a kernel
    # built without modules.
    out, _ = sh(
        attacker,
        'python3 -c "import ctypes; c = ctypes.CDLL(None, use_errno=True); '
        "print(c.syscall(175, None, 0, b''), ctypes.get_errno())\"",
    )
    assert out.split() in (["-1", "1"], ["-1", "38"])


def test_the_supervisors_socket_is_closed_to_unprivileged_users(attacker: Sandbox) -> None:
    probe = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect('/.hutch/run/supervisor.sock'); print('CONNECTED')\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    out, _ = sh(attacker, f'python3 -c "{probe}"', user="user")
    assert out.strip() in ("PermissionError", "OSError"), out
    out, code = sh(attacker, "ls /.hutch/run 2>&1", user="user")
    assert code != 0 and "supervisor.sock" not in out


def test_setuid_binaries_do_not_escalate(attacker: Sandbox) -> None:
    attacker.commands.run("cp /bin/bash /tmp/rootbash && chmod u+s /tmp/rootbash")
    out, _ = sh(attacker, "/tmp/rootbash -p -c 'id -u'", user="user")
    assert out.strip() == "1000"


def test_a_fork_bomb_is_held_by_the_pids_limit(attacker: Sandbox, victim: Sandbox) -> None:
    if attacker.get_info().isolation == "gvisor":
        # gVisor's kernel runs the sandbox's processes on host threads counted by the same pids
        # limit: a bomb exhausts it and the sandbox ends as a whole. The node and others go on.
        with pytest.raises(HutchError):
            attacker.commands.run("bomb() { bomb | bomb; }; bomb", timeout=20)
        wait_for_state(attacker, "killed")
        assert_victim_untouched(victim)
        return
    # In the foreground: the pids limit stops it growing, the timeout ends its process group.
    with pytest.raises(TimeoutError):
        attacker.commands.run("bomb() { bomb | bomb; }; bomb", timeout=5)
    wait_for_echo(attacker)
    assert_victim_untouched(victim)
    # Left running in the background it fills only its own sandbox, which can still be killed.
    attacker.commands.run("bomb() { bomb | bomb & }; bomb", timeout=10)
    time.sleep(2)
    assert_victim_untouched(victim)
    attacker.kill()
    assert not attacker.is_running()
    assert_victim_untouched(victim)


def wait_for_state(sandbox: Sandbox, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sandbox.get_info().state != state:
        assert time.monotonic() < deadline, f"{sandbox.id} never became {state}"
        time.sleep(0.2)


def wait_for_echo(sandbox: Sandbox, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sandbox.commands.run("echo recovered", timeout=10).stdout == "recovered\n":
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_a_memory_hog_is_killed_inside_its_own_sandbox(attacker: Sandbox, victim: Sandbox) -> None:
    hog = 'python3 -c "x = bytearray(1024 * 1024 * 1024)"; echo exit=$?'
    if attacker.get_info().isolation == "gvisor":
        # All of a gVisor sandbox's memory is its user-space kernel's: the OOM killer ends the
        # sandbox as a whole, inside its own cgroup, and the node reports it.
        with pytest.raises(HutchError):
            attacker.commands.run(hog)
        wait_for_state(attacker, "killed")
        assert "exited" in (attacker.get_info().state_reason or "")
    else:
        out, _ = sh(attacker, hog)
        assert "exit=137" in out
        assert attacker.commands.run("echo still-here").stdout == "still-here\n"
    assert_victim_untouched(victim)


def test_a_cpu_spinner_is_held_to_its_quota(attacker: Sandbox, victim: Sandbox) -> None:
    attacker.commands.run("for i in 1 2 3 4; do (while :; do :; done) & done; true")
    usage = Path(f"/sys/fs/cgroup/cpuacct/hutch/{attacker.id}/cpuacct.usage")
    before, started = int(usage.read_text()), time.monotonic()
    time.sleep(2)
    vcpus = (int(usage.read_text()) - before) / 1e9 / (time.monotonic() - started)
    # Four spinning processes, one vCPU of quota: the sandbox gets about one CPU, never the node.
    assert 0.5 < vcpus < 1.2, vcpus
    assert victim.commands.run("python3 -c 'print(sum(range(10**6)))'").stdout == "499999500000\n"
    assert_victim_untouched(victim)


def test_the_node_agent_refuses_calls_without_the_internal_token(local_stack: Any) -> None:
    address = f"127.0.0.1:{component_port(local_stack, 'node-agent')}"
    with grpc.insecure_channel(address) as channel:
        stub = node_agent_pb2_grpc.NodeAgentStub(channel)
        for metadata in ((), (("x-hutch-internal-token", "guess"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListLocal(node_agent_pb2.ListLocalRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListLocal(node_agent_pb2.ListLocalRequest(), metadata=internal_metadata(local_stack.internal_token))


def test_a_declared_oversize_upload_is_refused_before_any_byte(attacker: Sandbox, local_stack: Any) -> None:
    with grpc.insecure_channel(local_stack.endpoint) as channel:
        stub = files_pb2_grpc.FilesStub(channel)
        header = files_pb2.WriteFileHeader(sandbox=attacker.id, path="/root/huge.bin", size=64 * 1024**3)
        with pytest.raises(grpc.RpcError) as info:
            stub.Write(
                iter([files_pb2.WriteFileRequest(header=header)]),
                metadata=(("authorization", f"Bearer {local_stack.api_key}"),),
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than" in (info.value.details() or "")
    assert not attacker.files.exists("/root/huge.bin")


def write_raw(local_stack: Any, requests: list[files_pb2.WriteFileRequest]) -> grpc.RpcError | None:
    with grpc.insecure_channel(local_stack.endpoint) as channel:
        try:
            files_pb2_grpc.FilesStub(channel).Write(
                iter(requests), metadata=(("authorization", f"Bearer {local_stack.api_key}"),)
            )
        except grpc.RpcError as exc:
            return exc
    return None


def test_a_cut_off_or_oversize_upload_never_touches_the_file(attacker: Sandbox, local_stack: Any) -> None:
    attacker.files.write("/root/keep.txt", "original")
    header = files_pb2.WriteFileHeader(sandbox=attacker.id, path="/root/keep.txt")
    data = files_pb2.WriteFileRequest(data=b"new bytes")
    end = files_pb2.WriteFileRequest(end=files_pb2.WriteFileEnd())

    # One message over gRPC's size limit: gRPC ends the gateway's request stream quietly.
    oversize = write_raw(
        local_stack, [files_pb2.WriteFileRequest(header=header), files_pb2.WriteFileRequest(data=b"x" * 20 * 1024**2)]
    )
    assert oversize is not None and oversize.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A stream that stops without `end`.
    cut = write_raw(local_stack, [files_pb2.WriteFileRequest(header=header), data])
    assert cut is not None and cut.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing was written" in (cut.details() or "")
    # Fewer bytes than the header declared.
    short_header = files_pb2.WriteFileHeader(sandbox=attacker.id, path="/root/keep.txt", size=1000)
    short = write_raw(local_stack, [files_pb2.WriteFileRequest(header=short_header), data, end])
    assert short is not None and short.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert attacker.files.read("/root/keep.txt") == "original"
    leftovers = [e.name for e in attacker.files.list("/root") if e.name not in (".bashrc", ".profile", "keep.txt")]
    assert leftovers == []
    assert write_raw(local_stack, [files_pb2.WriteFileRequest(header=header), data, end]) is None
    assert attacker.files.read("/root/keep.txt") == "new bytes"


def test_other_sandboxes_metadata_and_private_ranges_are_unreachable(attacker: Sandbox, victim: Sandbox) -> None:
    victim_ip = victim.commands.run("ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1").stdout.strip()
    assert victim_ip, "a container sandbox has its own address"
    victim.commands.run("python3 -m http.server 8080 >/dev/null 2>&1 & sleep 0.5")
    assert (
        victim.commands.run(
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080').status)\""
        ).stdout.strip()
        == "200"
    )
    for target in (f"{victim_ip}:8080", "169.254.169.254:80", "10.0.0.1:80", "192.168.1.1:80", "172.16.0.1:80"):
        host, port = target.split(":")
        probe = (
            "import socket\n"
            "s = socket.socket(); s.settimeout(3)\n"
            f"try:\n s.connect(('{host}', {port})); print('CONNECTED')\n"
            "except OSError as e: print(type(e).__name__)\n"
        )
        out, _ = sh(attacker, f'python3 -c "{probe}"')
        assert out.strip() != "CONNECTED", target
    assert_victim_untouched(victim)


def test_a_disk_filler_stops_at_its_quota(attacker: Sandbox, victim: Sandbox) -> None:
    # The test stack gives each sandbox 512 MiB of writable layer.
    out, code = sh(attacker, "dd if=/dev/zero of=/root/fill bs=1M count=2048 2>&1; echo exit=$?")
    assert "exit=0" not in out and ("quota" in out.lower() or "no space" in out.lower()), out
    size = int(attacker.commands.run("stat -c %s /root/fill").stdout)
    assert size <= 512 * 2**20
    sh(attacker, "rm -f /root/fill")
    assert_victim_untouched(victim)


def test_the_runtime_binaries_cannot_be_overwritten_through_proc(attacker: Sandbox, victim: Sandbox) -> None:
    # The classic container escape rewrites the runtime through /proc/<pid>/exe. PID 1 here is the
    # supervisor, whose loader and interpreter are a read-only mount owned by the host's root.
    out, _ = sh(attacker, "echo x >> /proc/1/exe 2>&1; echo done")
    assert "denied" in out.lower() or "read-only" in out.lower(), out
    assert attacker.commands.run("echo still-fine").stdout == "still-fine\n"
    # Its own binaries are its own to break: the template below them is untouched for everyone else.
    sh(attacker, "echo x >> /proc/self/exe")
    assert victim.commands.run("bash -c 'echo bash-intact'").stdout == "bash-intact\n"
