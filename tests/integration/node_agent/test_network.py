"""Sandbox networks on the real kernel: what a sandbox can and cannot reach, without containers.

Probes run inside a sandbox's namespace with `ip netns exec`. Every target is a server these tests
start themselves: on the host (bound to the loopback or to the lab's own addresses), in another
sandbox, or in an "outside" namespace that holds a private address (10.1.2.3) and the cloud
metadata address (169.254.169.254). Routing is hermetic: a policy rule sends everything from the
lab's pool to a routing table that knows only the lab's own destinations and is unreachable for all
else, so nothing ever leaves the machine even if a rule were wrong. Forwarding is switched on for
the lab's interfaces only, so the host would route between them: a control test shows that every
probe succeeds once the node's table is gone, which makes each refusal elsewhere the firewall's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hutch.core import errors
from hutch_node_agent.network import (
    SYS_CLASS_NET,
    SandboxNetwork,
    SandboxNetworks,
    interface_prefix,
    netns_name,
    slot_addresses,
    table_name,
)
from hutch_node_agent.settings import EgressTarget

pytestmark = pytest.mark.integration

PRIVATE = "10.1.2.3"
METADATA = "169.254.169.254"
OUTSIDE_PORT, OTHER_PORT = 8001, 8002
SANDBOX_PORT = 8080
BLOCKED = ("refused", "unreachable")

# Connects to each [host, port] and reports what happened and how long it took.
PROBE = r"""
import errno, json, socket, sys, time
results = []
for host, port in json.loads(sys.argv[1]):
    sock = socket.socket()
    sock.settimeout(2.0)
    start = time.monotonic()
    try:
        sock.connect((host, port))
        result = "open" if sock.recv(2) == b"ok" else "open-silent"
    except ConnectionRefusedError:
        result = "refused"
    except socket.timeout:
        result = "timeout"
    except OSError as exc:
        result = "unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else str(exc)
    finally:
        sock.close()
    results.append([f"{host}:{port}", result, (time.monotonic() - start) * 1000])
print(json.dumps(results))
"""

# Listens on each [host, port] and greets every connection with b"ok".
SERVER = r"""
import json, selectors, socket, sys
selector = selectors.DefaultSelector()
for host, port in json.loads(sys.argv[1]):
    listener = socket.create_server((host, port))
    selector.register(listener, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"ok")
        conn.close()
"""

# Hand-made TCP SYNs through a raw socket: "send" forges one (any source address), "watch" reports
# whether a SYN-ACK for it arrives, "both" does the two in one namespace.
RAW = r"""
import json, socket, struct, sys, time
args = json.loads(sys.argv[1])

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def send():
    src, dst = socket.inet_aton(args["src"]), socket.inet_aton(args["dst"])
    tcp = struct.pack("!HHIIBBHHH", args["sport"], args["dport"], 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ip + tcp, (args["dst"], 0))

def watch(sock):
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            packet = sock.recv(4096)
        except socket.timeout:
            break
        header = (packet[0] & 0x0F) * 4
        sport, dport = struct.unpack("!HH", packet[header : header + 4])
        flags = packet[header + 13]
        if socket.inet_ntoa(packet[12:16]) == args["dst"] and (sport, dport) == (args["dport"], args["sport"]):
            return "syn-ack" if flags & 0x12 == 0x12 else "other"
    return "nothing"

sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
if args["mode"] == "send":
    send()
    print("sent")
elif args["mode"] == "watch":
    print("ready", flush=True)
    print(watch(sock))
else:
    send()
    print(watch(sock))
"""


@dataclass
class Lab:
    tag: str
    # The hermetic routes cover this /25; the default node takes its first /26, a second node the next.
    routed: IPv4Network
    pool: IPv4Network
    state_root: Path
    outside_netns: str
    outside_link: str
    outside_link_ip: IPv4Address
    instances: list[SandboxNetworks] = field(default_factory=list)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)
    counter: int = 0

    def networks(self, egress: EgressTarget | None = None, node: str = "a") -> SandboxNetworks:
        """A node's SandboxNetworks; a second call with the same node plays a restarted node-agent."""
        instance = SandboxNetworks(f"lab-{self.tag}-{node}", self.pool, self.state_root / node, egress)
        self.instances.append(instance)
        return instance

    def sandbox_id(self) -> str:
        self.counter += 1
        return f"sb-{self.tag}{self.counter:04d}"

    async def create(self, networks: SandboxNetworks) -> SandboxNetwork:
        network = await networks.create(self.sandbox_id())
        # The host would route for this interface (as with net.ipv4.ip_forward=1): only the
        # firewall keeps the sandbox in.
        _sysctl(f"net/ipv4/conf/{network.host_interface}/forwarding", "1")
        _sysctl(f"net/ipv4/conf/{network.host_interface}/rp_filter", "0")
        return network

    async def serve_in(self, netns: str, addresses: list[tuple[str, int]]) -> None:
        proc = await _netns_python(netns, SERVER, json.dumps(addresses), stdout=asyncio.subprocess.PIPE)
        self.processes.append(proc)
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"

    async def serve_on_host(self, host: str, port: int = 0) -> int:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, host, port)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop_servers_in_namespaces(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self.processes.clear()


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(value)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


async def _cmd(*argv: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {err.decode()}")
    return out.decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


async def _netns_python(netns: str, script: str, arg: str, stdout: int | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", script, arg, stdout=stdout
    )


async def probe(network: SandboxNetwork, *targets: tuple[object, int]) -> dict[str, tuple[str, float]]:
    """{"host:port": (outcome, milliseconds)} for connections made from inside the sandbox."""
    pairs = [[str(host), port] for host, port in targets]
    proc = await _netns_python(network.netns_name, PROBE, json.dumps(pairs), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return {target: (result, ms) for target, result, ms in json.loads(out)}


def assert_blocked(results: dict[str, tuple[str, float]]) -> None:
    for target, (outcome, ms) in results.items():
        assert outcome in BLOCKED, f"{target} answered {outcome}"
        assert ms < 1000, f"{target} took {ms:.0f} ms to refuse"


async def raw_syn(network: SandboxNetwork, mode: str, **args: object) -> str:
    proc = await _netns_python(
        network.netns_name, RAW, json.dumps({"mode": mode, **args}), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables")
    tag = uuid.uuid4().hex[:6]
    third = random.randrange(256)
    lab = Lab(
        tag=tag,
        routed=IPv4Network(f"100.115.{third}.0/25"),
        pool=IPv4Network(f"100.115.{third}.0/26"),
        state_root=tmp_path,
        outside_netns=f"hxt-{tag}",
        outside_link=f"hxt{tag}",
        outside_link_ip=IPv4Address(f"100.115.{third}.129"),
    )
    route_table, rule_pref = str(20000 + random.randrange(10000)), str(20000 + random.randrange(10000))
    try:
        _make_outside(lab)
        _make_hermetic_routes(lab, route_table, rule_pref)
        yield lab
    finally:
        await _clean_up(lab, route_table, rule_pref)


def _make_outside(lab: Lab) -> None:
    """A namespace standing for the rest of the world: a private and a link-local address."""
    ns, link = lab.outside_netns, lab.outside_link
    _ip("netns", "add", ns)
    _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("addr", "add", f"{lab.outside_link_ip}/32", "dev", link)
    _ip("link", "set", link, "up")
    _sysctl(f"net/ipv4/conf/{link}/forwarding", "1")
    _sysctl(f"net/ipv4/conf/{link}/rp_filter", "0")
    for command in (
        ["link", "set", "lo", "up"],
        ["addr", "add", f"{PRIVATE}/32", "dev", "eth0"],
        ["addr", "add", f"{METADATA}/32", "dev", "eth0"],
        ["link", "set", "eth0", "up"],
        ["route", "add", f"{lab.outside_link_ip}/32", "dev", "eth0"],
        ["route", "add", "default", "via", str(lab.outside_link_ip)],
    ):
        _ip("-n", ns, *command)


def _make_hermetic_routes(lab: Lab, table: str, pref: str) -> None:
    """Traffic from the lab's pool goes to the lab's destinations or nowhere."""
    _ip("route", "add", f"{PRIVATE}/32", "dev", lab.outside_link, "table", table)
    _ip("route", "add", f"{METADATA}/32", "dev", lab.outside_link, "table", table)
    _ip("route", "add", "throw", str(lab.routed), "table", table)  # sandbox to sandbox: the main table
    _ip("route", "add", "unreachable", "default", "table", table)
    _ip("rule", "add", "from", str(lab.routed), "lookup", table, "pref", pref)


async def _clean_up(lab: Lab, table: str, pref: str) -> None:
    await lab.stop_servers_in_namespaces()
    for server in lab.servers:
        server.close()
    for instance in reversed(lab.instances):
        with contextlib.suppress(errors.HutchError):
            if instance.table not in await _tables():
                await instance.setup()  # a test removed the table; put it back to tear it down
            await instance.teardown()
    await _cmd("ip", "rule", "del", "pref", pref, check=False)
    await _cmd("ip", "route", "flush", "table", table, check=False)
    await _cmd("ip", "link", "del", lab.outside_link, check=False)
    await _cmd("ip", "netns", "del", lab.outside_netns, check=False)
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if f"-sb-{lab.tag}" in name:
            await _cmd("ip", "netns", "del", name, check=False)


async def _tables() -> set[str]:
    out = await _cmd("nft", "list", "tables", "inet")
    return {line.split()[-1] for line in out.splitlines() if line.startswith("table")}


async def _sources(table: str) -> str:
    return await _cmd("nft", "list", "set", "inet", table, "sources")


def _gone(network: SandboxNetwork) -> bool:
    return not Path(network.netns_path).exists() and not (SYS_CLASS_NET / network.host_interface).exists()


# -- the shape of a sandbox's network --------------------------------------------------------------


async def test_a_sandbox_gets_its_namespace_link_addresses_and_route(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    network = await lab.create(networks)

    assert network.netns_path == f"/run/netns/{networks.table}-{network.sandbox_id}"
    assert (network.host_ip, network.sandbox_ip) == slot_addresses(lab.pool, 0)
    assert network.host_interface.startswith(interface_prefix(networks.table))
    inside = await _cmd("ip", "-n", network.netns_name, "-j", "addr")
    links = {link["ifname"]: link for link in json.loads(inside)}
    assert set(links) == {"lo", "eth0"}
    assert all("UP" in link["flags"] for link in links.values())
    eth0 = [(a["family"], a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"]]
    assert eth0 == [("inet", str(network.sandbox_ip), 30)]  # IPv4 only: no IPv6 link-local address
    route = await _cmd("ip", "-n", network.netns_name, "route", "show", "default")
    assert f"default via {network.host_ip} dev eth0" in route
    assert f'"{network.host_interface}" . {network.sandbox_ip}' in await _sources(networks.table)


# -- what a sandbox cannot reach -------------------------------------------------------------------


async def test_a_sandbox_cannot_reach_the_host(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    a, b = await lab.create(networks), await lab.create(networks)
    loopback_port = await lab.serve_on_host("127.0.0.1")
    own_end = await lab.serve_on_host(str(a.host_ip))
    other_end = await lab.serve_on_host(str(b.host_ip))
    outside_end = await lab.serve_on_host(str(lab.outside_link_ip))

    results = await probe(
        a,
        ("127.0.0.1", loopback_port),  # the sandbox's own loopback, not the host's
        (a.host_ip, loopback_port),
        (a.host_ip, own_end),
        (b.host_ip, other_end),
        (lab.outside_link_ip, outside_end),
    )

    assert_blocked(results)


async def test_sandboxes_cannot_reach_each_other_but_the_host_reaches_them(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    a, b = await lab.create(networks), await lab.create(networks)
    await lab.serve_in(b.netns_name, [(str(b.sandbox_ip), SANDBOX_PORT)])

    assert_blocked(await probe(a, (b.sandbox_ip, SANDBOX_PORT)))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(str(b.sandbox_ip), SANDBOX_PORT), 2)
    assert await reader.read() == b"ok"
    writer.close()


async def test_private_and_link_local_addresses_are_refused(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    a = await lab.create(networks)
    await lab.serve_in(lab.outside_netns, [(PRIVATE, OUTSIDE_PORT), (METADATA, OUTSIDE_PORT)])

    assert_blocked(await probe(a, (PRIVATE, OUTSIDE_PORT), (METADATA, OUTSIDE_PORT)))


async def test_every_probe_succeeds_once_the_table_is_gone(lab: Lab) -> None:
    """The control for the refusals above: routes, forwarding and servers all work."""
    networks = lab.networks()
    await networks.setup()
    a, b = await lab.create(networks), await lab.create(networks)
    await lab.serve_in(b.netns_name, [(str(b.sandbox_ip), SANDBOX_PORT)])
    await lab.serve_in(lab.outside_netns, [(PRIVATE, OUTSIDE_PORT), (METADATA, OUTSIDE_PORT)])
    host_end = await lab.serve_on_host(str(a.host_ip))
    targets = [(a.host_ip, host_end), (b.sandbox_ip, SANDBOX_PORT), (PRIVATE, OUTSIDE_PORT), (METADATA, OUTSIDE_PORT)]
    assert_blocked(await probe(a, *targets))

    await _cmd("nft", "delete", "table", "inet", networks.table)
    opened = await probe(a, *targets)
    await networks.setup()

    assert {outcome for outcome, _ in opened.values()} == {"open"}, opened
    assert_blocked(await probe(a, *targets))


async def test_a_sandbox_cannot_forge_another_sandbox_address(lab: Lab) -> None:
    # With an egress target on the host, a forged SYN would be answered if it got through: the
    # SYN-ACK would go to the sandbox whose address was forged.
    port = _free_port()
    host_ip, _ = slot_addresses(lab.pool, 0)
    networks = lab.networks(EgressTarget(address=host_ip, port=port))
    await networks.setup()
    a, b = await lab.create(networks), await lab.create(networks)
    await lab.serve_on_host(str(host_ip), port)
    syn = {"dst": str(host_ip), "dport": port, "sport": 40000 + random.randrange(20000)}

    assert await raw_syn(a, "both", src=str(a.sandbox_ip), **syn) == "syn-ack"  # a real SYN is answered

    watcher = await _netns_python(b.netns_name, RAW, json.dumps({"mode": "watch", **syn}), asyncio.subprocess.PIPE)
    assert watcher.stdout is not None
    assert await watcher.stdout.readline() == b"ready\n"
    assert await raw_syn(a, "send", src=str(b.sandbox_ip), **syn) == "sent"
    assert (await watcher.stdout.read()).decode().strip() == "nothing"
    await watcher.wait()


# -- the egress target -----------------------------------------------------------------------------


async def test_the_egress_target_is_the_only_destination_outside(lab: Lab) -> None:
    networks = lab.networks(EgressTarget(address=IPv4Address(PRIVATE), port=OUTSIDE_PORT))
    await networks.setup()
    a, b = await lab.create(networks), await lab.create(networks)
    await lab.serve_in(lab.outside_netns, [(PRIVATE, OUTSIDE_PORT), (PRIVATE, OTHER_PORT), (METADATA, OUTSIDE_PORT)])
    await lab.serve_in(b.netns_name, [(str(b.sandbox_ip), SANDBOX_PORT)])
    host_end = await lab.serve_on_host(str(a.host_ip))

    assert (await probe(a, (PRIVATE, OUTSIDE_PORT)))[f"{PRIVATE}:{OUTSIDE_PORT}"][0] == "open"
    assert_blocked(
        await probe(
            a, (PRIVATE, OTHER_PORT), (METADATA, OUTSIDE_PORT), (b.sandbox_ip, SANDBOX_PORT), (a.host_ip, host_end)
        )
    )


async def test_an_egress_target_on_the_host_end_opens_only_its_port(lab: Lab) -> None:
    port = _free_port()
    host_ip, _ = slot_addresses(lab.pool, 0)
    networks = lab.networks(EgressTarget(address=host_ip, port=port))
    await networks.setup()
    a = await lab.create(networks)
    assert a.host_ip == host_ip
    await lab.serve_on_host(str(host_ip), port)
    other = await lab.serve_on_host(str(host_ip))

    results = await probe(a, (host_ip, port), (host_ip, other))

    assert results[f"{host_ip}:{port}"][0] == "open"
    assert_blocked({f"{host_ip}:{other}": results[f"{host_ip}:{other}"]})


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_destroy_removes_the_namespace_the_link_and_the_rule(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    network = await lab.create(networks)

    await networks.destroy(network.sandbox_id)
    await networks.destroy(network.sandbox_id)  # idempotent

    assert _gone(network)
    assert network.host_interface not in await _sources(networks.table)
    assert networks.get(network.sandbox_id) is None


async def test_destroy_removes_a_namespace_a_process_still_holds(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    network = await lab.create(networks)
    await lab.serve_in(network.netns_name, [(str(network.sandbox_ip), SANDBOX_PORT)])  # pins the namespace

    await networks.destroy(network.sandbox_id)

    assert _gone(network)


async def test_recover_keeps_live_networks_and_removes_the_rest(lab: Lab) -> None:
    first = lab.networks()
    await first.setup()
    live, dead, broken = await lab.create(first), await lab.create(first), await lab.create(first)
    _ip("link", "del", broken.host_interface)  # a network left half-made
    await lab.serve_in(live.netns_name, [(str(live.sandbox_ip), SANDBOX_PORT)])

    restarted = lab.networks()  # same node, same state folder
    await restarted.setup()
    kept = await restarted.recover([live.sandbox_id])

    assert kept == {live.sandbox_id: live}
    assert _gone(dead) and _gone(broken)
    sources = await _sources(restarted.table)
    assert live.host_interface in sources and dead.host_interface not in sources
    reader, writer = await asyncio.wait_for(asyncio.open_connection(str(live.sandbox_ip), SANDBOX_PORT), 2)
    assert await reader.read() == b"ok"
    writer.close()
    assert_blocked(await probe(live, (live.host_ip, await lab.serve_on_host(str(live.host_ip)))))


async def test_addresses_are_reused_after_destroy_and_never_shared(lab: Lab) -> None:
    tiny = IPv4Network(f"{lab.pool.network_address}/29")  # two slots
    networks = SandboxNetworks(f"lab-{lab.tag}-t", tiny, lab.state_root / "tiny")
    lab.instances.append(networks)
    await networks.setup()
    first, second = await lab.create(networks), await lab.create(networks)
    assert first.sandbox_ip != second.sandbox_ip
    with pytest.raises(errors.ResourceExhausted):
        await networks.create(lab.sandbox_id())

    await networks.destroy(first.sandbox_id)
    third = await lab.create(networks)

    assert (third.sandbox_ip, third.host_interface) == (first.sandbox_ip, first.host_interface)
    assert third.sandbox_id != first.sandbox_id


async def test_a_failed_create_leaves_nothing_behind(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    taken = lab.sandbox_id()
    _ip("netns", "add", netns_name(networks.table, taken))  # a namespace of that name already exists
    try:
        with pytest.raises(errors.Internal):
            await networks.create(taken)
        assert networks.get(taken) is None
        assert not [name for name in os.listdir(SYS_CLASS_NET) if name.startswith(interface_prefix(networks.table))]
    finally:
        await _cmd("ip", "netns", "del", netns_name(networks.table, taken), check=False)


async def test_two_nodes_on_one_host_keep_their_own_tables(lab: Lab) -> None:
    a_networks = lab.networks(node="a")
    b_networks = SandboxNetworks(f"lab-{lab.tag}-b", f"{lab.pool.network_address + 64}/26", lab.state_root / "b")
    lab.instances.append(b_networks)
    await a_networks.setup()
    await b_networks.setup()
    a, b = await lab.create(a_networks), await lab.create(b_networks)

    await a_networks.teardown()

    assert a_networks.table not in await _tables() and _gone(a)
    assert b_networks.table in await _tables() and Path(b.netns_path).exists()


async def test_teardown_leaves_nothing_behind(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    created = [await lab.create(networks) for _ in range(3)]

    await networks.teardown()

    assert networks.table not in await _tables()
    assert all(_gone(network) for network in created)


async def test_create_and_destroy_are_quick(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()
    ids = [lab.sandbox_id() for _ in range(16)]  # the whole pool
    created, destroyed = [], []
    for sandbox_id in ids:
        start = time.perf_counter()
        await networks.create(sandbox_id)
        created.append((time.perf_counter() - start) * 1000)
    for sandbox_id in ids:
        start = time.perf_counter()
        await networks.destroy(sandbox_id)
        destroyed.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    await asyncio.gather(*(networks.create(sandbox_id) for sandbox_id in ids))
    concurrent_create = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    await asyncio.gather(*(networks.destroy(sandbox_id) for sandbox_id in ids))
    concurrent_destroy = (time.perf_counter() - start) * 1000

    print(
        f"\nsandbox network: create median {statistics.median(created):.1f} ms (max {max(created):.1f}), "
        f"destroy median {statistics.median(destroyed):.1f} ms (max {max(destroyed):.1f}); "
        f"16 at once: create {concurrent_create:.0f} ms, destroy {concurrent_destroy:.0f} ms"
    )
    # Generous bounds: shared test machines are noisy; the figures above are what to look at.
    assert statistics.median(created) < 40
    assert statistics.median(destroyed) < 150


async def test_table_name_follows_the_node_id(lab: Lab) -> None:
    networks = lab.networks()
    await networks.setup()

    assert networks.table == table_name(f"lab-{lab.tag}-a") in await _tables()
