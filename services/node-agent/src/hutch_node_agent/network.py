"""Sandbox networks: a network namespace per sandbox, a veth pair to the host, nftables around it.

Each sandbox gets a /30 of the node's pool (`NodeOptions.sandbox_network`): the host end of its veth
pair takes the first address, the sandbox end (`eth0` inside the namespace `hutch-<sandbox id>`)
the second, and the sandbox's default route points at the host end. What may cross that link is
decided by one nftables table per node, `inet hutch_<node id>`, written at `setup()`:

* from a sandbox, the host accepts only replies to connections the host opened and, when an egress
  target is configured, new TCP connections to exactly that address and port. Everything else is
  refused at once, TCP with a reset and the rest with an ICMP error, so a blocked connect fails
  fast instead of hanging. A target on the host (any of its addresses, e.g. a sandbox's host end)
  needs nothing more; one elsewhere also needs the host to forward and a way back to the pool;
* a sandbox sends IPv4 only, and only from its own address: the `sources` set binds each host-side
  interface to its sandbox's address, so no sandbox can pose as another;
* nothing is routed into a sandbox except replies, so the host never forwards between sandboxes,
  even with `net.ipv4.ip_forward=1`;
* the host itself may connect into a sandbox (the node-agent reaches preview ports that way);
* with the node's egress-proxy configured (`NodeOptions.egress_proxy`), every TCP connection a
  sandbox opens is redirected to the proxy's transparent port and every UDP query to port 53 to its
  DNS port (`chain sandbox_nat`), except connections to the platform's deny set (loopback, private,
  link-local, carrier-grade NAT, the sandbox pool, the node's own addresses), which are refused at
  once without reaching the proxy. The one address of that set that is redirected is the proxy's
  sentinel (192.0.0.8), which its DNS responder hands out for names a sandbox may not reach, so the
  request that follows is refused with a reason. Whatever the proxy does not accept is refused:
  while it is down, sandboxes have no egress at all.

The rules find sandbox interfaces by a name prefix derived from the table, not by a list, so they
cover an interface from the moment it exists: a missing `sources` entry cuts a sandbox off, it never
opens it up. Interfaces of another node-agent on the same host carry another prefix.

Addresses are allocated round-robin (a freed /30 is the last to be handed out again, so a new
sandbox rarely meets state the kernel still keeps for an old address, such as conntrack entries)
and recorded in `<root>/network/allocations.json` before any interface exists; an entry is released
only once the interfaces are gone. The file therefore covers every interface this node made, and two
live sandboxes never share an address.

Wiring into `SandboxManager`:

1. At start: `networks = SandboxNetworks.for_node(options)` and `await networks.setup()` before any
   sandbox is created; once the manager has found its sandboxes again,
   `await networks.recover(<ids of the sandboxes it adopted>)` removes the rest.
2. In create, before the runtime starts the container: `network = await networks.create(sandbox.id)`
   and `oci.ContainerSpec(..., netns_path=network.netns_path)`, so crun and `runsc --network=sandbox`
   join that namespace instead of making an empty one. (runsc releases before mid-2024 refuse
   `--network=sandbox` on kernels from about 6.11 on, mistaking any namespace for the root one:
   google/gvisor#10704.)
3. In teardown, after the runtime has deleted the container: `await networks.destroy(sandbox_id)`.
   It is idempotent, so it may run for a sandbox that never got a network.

The table stays when the node-agent stops, because the sandboxes do; `teardown()` (tests, a node
taken out of service) destroys every network of the node and then the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, collapse_addresses
from pathlib import Path
from typing import Any

from hutch.core import errors
from hutch.egress_policy.platform import PLATFORM_DENY_V4
from hutch_node_agent.domain import check_sandbox_id
from hutch_node_agent.settings import SANDBOX_SUBNET_PREFIX, EgressProxyTarget, EgressTarget, NodeOptions

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
SYS_CLASS_NET = Path("/sys/class/net")
SANDBOX_INTERFACE = "eth0"
SLOT_PREFIX_LEN = SANDBOX_SUBNET_PREFIX
_SLOT_SIZE = 4
# Interface names hold at most 15 characters: "hv", 7 hex digits of the table, 6 of the slot index.
_INDEX_DIGITS = 6
# How long destroy() waits for the kernel to remove a deleted namespace's veth pair (it takes one RCU
# grace period, ~35 ms, for any number of namespaces) before removing the pair itself.
_RELEASE_WAIT_S = 1.0
_RELEASE_POLL_S = 0.003


# -- naming and the address plan (pure) ------------------------------------------------------------


def table_name(node_id: str) -> str:
    """The node's nftables table; node ids never contain '_', so the mapping is one to one."""
    return "hutch_" + node_id.replace("-", "_")


def interface_prefix(table: str) -> str:
    """What every host-side interface of one node starts with, and what the rules match on."""
    return "hv" + hashlib.sha256(table.encode()).hexdigest()[:7]


def interface_name(table: str, index: int) -> str:
    return f"{interface_prefix(table)}{index:0{_INDEX_DIGITS}x}"


def netns_name(table: str, sandbox_id: str) -> str:
    """Named after the node's table too: two node-agents on one host (a test, a partitioned node and
    its replacement) may each hold a network for the same sandbox id."""
    return f"{table}-{sandbox_id}"


def slot_count(pool: IPv4Network) -> int:
    return pool.num_addresses // _SLOT_SIZE


def slot_addresses(pool: IPv4Network, index: int) -> tuple[IPv4Address, IPv4Address]:
    """(host end, sandbox end) of the index-th /30 of the pool."""
    if not 0 <= index < slot_count(pool):
        raise ValueError(f"slot {index} is outside {pool}")
    base = pool.network_address + index * _SLOT_SIZE
    return base + 1, base + 2


class AddressAllocator:
    """Which sandbox holds which /30 of the pool. Pure: SandboxNetworks persists it."""

    def __init__(self, pool: IPv4Network, assigned: Mapping[str, int] | None = None, cursor: int = 0) -> None:
        self.pool = pool
        self._capacity = slot_count(pool)
        if self._capacity == 0:
            raise ValueError(f"{pool} holds no /{SLOT_PREFIX_LEN}")
        self._by_sandbox = dict(assigned or {})
        self._used = set(self._by_sandbox.values())
        if len(self._used) != len(self._by_sandbox):
            raise ValueError("two sandboxes hold the same slot")
        if any(not 0 <= index < self._capacity for index in self._used):
            raise ValueError(f"a slot lies outside {pool}")
        self._cursor = cursor % self._capacity

    def __contains__(self, sandbox_id: object) -> bool:
        return sandbox_id in self._by_sandbox

    def __len__(self) -> int:
        return len(self._by_sandbox)

    def get(self, sandbox_id: str) -> int | None:
        return self._by_sandbox.get(sandbox_id)

    def items(self) -> list[tuple[str, int]]:
        return sorted(self._by_sandbox.items())

    def allocate(self, sandbox_id: str) -> int:
        """The sandbox's slot: the first free one at or after the cursor, wrapping around."""
        if sandbox_id in self._by_sandbox:
            return self._by_sandbox[sandbox_id]
        if len(self._used) >= self._capacity:
            raise errors.ResourceExhausted(f"all {self._capacity} sandbox addresses of {self.pool} are in use")
        index = next(
            i for i in ((self._cursor + step) % self._capacity for step in range(self._capacity)) if i not in self._used
        )
        self._by_sandbox[sandbox_id] = index
        self._used.add(index)
        self._cursor = (index + 1) % self._capacity
        return index

    def release(self, sandbox_id: str) -> None:
        index = self._by_sandbox.pop(sandbox_id, None)
        if index is not None:
            self._used.discard(index)

    def to_record(self) -> dict[str, Any]:
        return {"pool": str(self.pool), "next": self._cursor, "sandboxes": dict(self.items())}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], pool: IPv4Network) -> AddressAllocator:
        stored = IPv4Network(record["pool"])
        assigned = {str(sandbox_id): int(index) for sandbox_id, index in record["sandboxes"].items()}
        if stored != pool and assigned:
            raise errors.FailedPrecondition(
                f"sandboxes still hold addresses of {stored}, but the node is configured for {pool}: "
                "kill them or set sandbox_network back"
            )
        return cls(pool, assigned, int(record.get("next", 0)))


# -- the nftables ruleset (pure) -------------------------------------------------------------------

# What the egress-proxy's DNS responder answers for names a sandbox may not reach (RFC 7600's dummy
# address): connections to it go to the proxy, which refuses them with a reason.
PROXY_SENTINEL = IPv4Address("192.0.0.8")


def never_redirected(pool: IPv4Network) -> list[IPv4Network]:
    """Destinations refused before the proxy: the platform's deny set and the sandbox pool, merged."""
    return list(collapse_addresses([pool, *PLATFORM_DENY_V4]))


def _proxy_rules(sandbox: str, pool: IPv4Network, proxy: EgressProxyTarget | None) -> tuple[list[str], list[str]]:
    """(the NAT chain that sends sandbox traffic to the proxy, the filter rules that let it in)."""
    if proxy is None:
        return [], []
    refused = ", ".join(str(n) for n in never_redirected(pool))
    nat = [
        "  chain sandbox_nat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    iifname != {sandbox} return",
        f"    udp dport 53 redirect to :{proxy.dns_port}",
        f"    ip daddr {PROXY_SENTINEL} meta l4proto tcp redirect to :{proxy.transparent_port}",
        f"    ip daddr {{ {refused} }} return",
        "    fib daddr type local return",
        f"    meta l4proto tcp redirect to :{proxy.transparent_port}",
        "  }",
    ]
    accept = [
        f"    ct status dnat tcp dport {proxy.transparent_port} accept",
        f"    ct status dnat udp dport {proxy.dns_port} accept",
    ]
    return nat, accept


def render_ruleset(
    table: str,
    pool: IPv4Network,
    egress: EgressTarget | None,
    members: Iterable[tuple[str, IPv4Address]] = (),
    proxy: EgressProxyTarget | None = None,
) -> str:
    """The node's whole table, as one `nft -f` transaction that replaces any previous version.

    `members` are (host-side interface, sandbox address) pairs of sandboxes that exist already, so
    replacing the table at a restart never leaves a live sandbox without its entry.
    """
    sandbox = f'"{interface_prefix(table)}*"'
    elements = ", ".join(f'"{interface}" . {address}' for interface, address in members)
    egress_rule = f"ip daddr {egress.address} tcp dport {egress.port} ct state new accept" if egress else ""
    nat_chain, proxy_accept = _proxy_rules(sandbox, pool, proxy)
    lines = [
        # Adding the table first makes the delete succeed on a fresh host; all three lines are one
        # transaction, so there is no moment without rules.
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  set sources {",
        "    type ifname . ipv4_addr",
        f"    elements = {{ {elements} }}" if elements else "",
        "  }",
        "  chain prerouting {",
        # Before conntrack, so forged packets never create connection-tracking entries.
        "    type filter hook prerouting priority raw; policy accept;",
        f"    iifname {sandbox} meta nfproto != ipv4 drop",
        f"    iifname {sandbox} iifname . ip saddr != @sources drop",
        # Nobody else may pose as a sandbox either (the host talking to itself comes in on lo).
        f'    iifname != {sandbox} iif != "lo" ip saddr {pool} drop',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    iifname {sandbox} jump from_sandbox",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    iifname {sandbox} jump from_sandbox",
        f"    oifname {sandbox} jump to_sandbox",
        "  }",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    oifname {sandbox} meta nfproto != ipv4 drop",
        "  }",
        "  chain from_sandbox {",
        "    ct state established,related accept",
        *proxy_accept,
        f"    {egress_rule}" if egress_rule else "",
        "    goto refuse",
        "  }",
        *nat_chain,
        "  chain to_sandbox {",
        "    ct state established,related accept",
        "    drop",
        "  }",
        "  chain refuse {",
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx admin-prohibited",
        "  }",
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def render_member(table: str, interface: str, address: IPv4Address, *, present: bool) -> str:
    """One transaction that adds or removes a sandbox's `sources` entry, whatever its state before."""
    element = f'inet {table} sources {{ "{interface}" . {address} }}'
    if present:
        return f"add element {element}\n"
    # Adding first makes the delete succeed when the entry is already gone.
    return f"add element {element}\ndelete element {element}\n"


def render_teardown(table: str) -> str:
    return f"table inet {table}\ndelete table inet {table}\n"


# -- the adapter -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxNetwork:
    sandbox_id: str
    # The namespace to join: the OCI config's network namespace path.
    netns_path: str
    host_interface: str
    host_ip: IPv4Address
    sandbox_ip: IPv4Address

    @property
    def netns_name(self) -> str:
        return Path(self.netns_path).name


class SandboxNetworks:
    """The networks of one node's sandboxes. Calls for one sandbox must not overlap (the manager's
    per-sandbox lock already ensures that); calls for different sandboxes may."""

    def __init__(
        self,
        node_id: str,
        pool: str | IPv4Network,
        state_dir: Path,
        egress: EgressTarget | None = None,
        proxy: EgressProxyTarget | None = None,
    ) -> None:
        self.table = table_name(node_id)
        self.pool = IPv4Network(pool)
        if self.pool.prefixlen > SLOT_PREFIX_LEN or slot_count(self.pool) > 16**_INDEX_DIGITS:
            raise errors.InvalidArgument(f"{self.pool} cannot be split into /{SLOT_PREFIX_LEN} sandbox networks")
        self.egress = egress
        self.proxy = proxy
        self._state_dir = state_dir
        self._state_file = state_dir / "allocations.json"
        self._lock = asyncio.Lock()
        self._allocator: AddressAllocator | None = None
        self._members = _GroupCommit()

    @classmethod
    def for_node(cls, options: NodeOptions) -> SandboxNetworks:
        return cls(
            options.id,
            options.sandbox_network,
            options.root_dir / "network",
            options.egress_target,
            options.egress_proxy,
        )

    # -- node lifecycle ----------------------------------------------------------------------------

    async def setup(self) -> None:
        """Loads the allocations and (re)writes the node's table; safe while sandboxes run."""
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise errors.FailedPrecondition(f"`{tool}` is not installed: apt-get install iproute2 nftables")
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._allocator = self._load()
        members = [(n.host_interface, n.sandbox_ip) for n in self._all()]
        ruleset = render_ruleset(self.table, self.pool, self.egress, members, self.proxy)
        await _nft(ruleset, "write the sandbox firewall")

    async def recover(self, live_sandbox_ids: Iterable[str]) -> dict[str, SandboxNetwork]:
        """After a restart: keeps the networks of live sandboxes, removes every other one."""
        live = set(live_sandbox_ids)
        kept: dict[str, SandboxNetwork] = {}
        for network in self._all():
            if network.sandbox_id in live:
                kept[network.sandbox_id] = network
                if not _exists(network):
                    log.warning("sandbox %s is live but its network %s is gone", network.sandbox_id, network.netns_name)
                continue
            log.info("removing the network of sandbox %s, which no longer runs", network.sandbox_id)
            await self.destroy(network.sandbox_id)
        return kept

    async def teardown(self) -> None:
        """Removes every network of this node, then the table."""
        if self._allocator is not None:
            for network in self._all():
                await self.destroy(network.sandbox_id)
        await _nft(render_teardown(self.table), "remove the sandbox firewall")

    # -- one sandbox -------------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> SandboxNetwork | None:
        index = self._ready().get(sandbox_id)
        return None if index is None else self._network(sandbox_id, index)

    def netns_of(self, sandbox_id: str) -> str | None:
        """The path of the sandbox's namespace while it exists (for the runtimes)."""
        network = self.get(sandbox_id) if self._allocator is not None else None
        return network.netns_path if network is not None and Path(network.netns_path).exists() else None

    async def create(self, sandbox_id: str) -> SandboxNetwork:
        check_sandbox_id(sandbox_id)
        allocator = self._ready()
        async with self._lock:
            if sandbox_id in allocator:
                raise errors.FailedPrecondition(f"sandbox {sandbox_id} already has a network")
            index = allocator.allocate(sandbox_id)
            self._save()  # before any interface exists: the file must cover all of them
        network = self._network(sandbox_id, index)
        try:
            # In turn, not side by side: measured, an nft commit running next to the making of a
            # namespace slows both down more than running them one after the other costs. Until its
            # sources entry exists, the new interface is already covered by the rules, just cut off.
            await self._make_links(network)
            await self._set_member(network, present=True)
        except BaseException:
            await self._destroy_after_failure(sandbox_id)
            raise
        return network

    async def destroy(self, sandbox_id: str) -> None:
        """Removes the sandbox's links, namespace and sources entry, then frees its address."""
        check_sandbox_id(sandbox_id)
        allocator = self._ready()
        index = allocator.get(sandbox_id)
        if index is None:
            return  # nothing of this node's: a namespace of that name would be another node's
        network = self._network(sandbox_id, index)
        await _all_of(self._remove_links(network), self._set_member(network, present=False))
        async with self._lock:
            allocator.release(sandbox_id)
            self._save()

    # -- helpers -----------------------------------------------------------------------------------

    def _ready(self) -> AddressAllocator:
        if self._allocator is None:
            raise errors.FailedPrecondition("sandbox networks are not set up: call setup() first")
        return self._allocator

    def _network(self, sandbox_id: str, index: int) -> SandboxNetwork:
        host_ip, sandbox_ip = slot_addresses(self.pool, index)
        return SandboxNetwork(
            sandbox_id=sandbox_id,
            netns_path=str(NETNS_DIR / netns_name(self.table, sandbox_id)),
            host_interface=interface_name(self.table, index),
            host_ip=host_ip,
            sandbox_ip=sandbox_ip,
        )

    def _all(self) -> list[SandboxNetwork]:
        return [self._network(sandbox_id, index) for sandbox_id, index in self._ready().items()]

    async def _set_member(self, network: SandboxNetwork, *, present: bool) -> None:
        script = render_member(self.table, network.host_interface, network.sandbox_ip, present=present)
        await self._members.run(script, f"update the firewall for sandbox {network.sandbox_id}")

    async def _make_links(self, network: SandboxNetwork) -> None:
        iface, netns, prefix = network.host_interface, network.netns_name, SLOT_PREFIX_LEN
        # No IPv6 link-local addresses on either end (where the kernel has IPv6 at all): the
        # sandbox speaks IPv4 only.
        has_ipv6 = Path("/proc/sys/net/ipv6").exists()
        host_side = [
            f"netns add {netns}",
            f"link add {iface} type veth peer name {SANDBOX_INTERFACE} netns {netns}",
            f"link set {iface} addrgenmode none" if has_ipv6 else "",
            f"addr add {network.host_ip}/{prefix} dev {iface}",
            f"link set {iface} up",
        ]
        sandbox_side = [
            "link set lo up",
            f"link set {SANDBOX_INTERFACE} addrgenmode none" if has_ipv6 else "",
            f"addr add {network.sandbox_ip}/{prefix} dev {SANDBOX_INTERFACE}",
            f"link set {SANDBOX_INTERFACE} up",
            f"route add default via {network.host_ip} dev {SANDBOX_INTERFACE}",
        ]
        what = f"create the network of sandbox {network.sandbox_id}"
        await _ip(["-batch", "-"], host_side, what)
        await _ip(["-netns", netns, "-batch", "-"], sandbox_side, what)

    async def _remove_links(self, network: SandboxNetwork) -> None:
        # Deleting the namespace lets the kernel remove it, and the veth pair with it, in the
        # background, where it batches many namespaces under one hold of the rtnl lock. `ip link del`
        # would hold that lock for a whole RCU grace period (~35 ms) per sandbox and stall every
        # concurrent create; it is only the fallback for a namespace some process still pins.
        _, err = await _run(["ip", "netns", "del", network.netns_name], "")
        if not await _vanished(SYS_CLASS_NET / network.host_interface, _RELEASE_WAIT_S):
            _, err = await _run(["ip", "link", "del", network.host_interface], "")
        if _exists(network):
            raise errors.Internal(f"could not remove the network of sandbox {network.sandbox_id}: {err}")

    async def _destroy_after_failure(self, sandbox_id: str) -> None:
        try:
            await self.destroy(sandbox_id)
        except Exception:
            # The allocation stays, so recover() or a later destroy() finishes the job.
            log.exception("could not clean up the half-made network of sandbox %s", sandbox_id)

    def _load(self) -> AddressAllocator:
        try:
            text = self._state_file.read_text()
        except FileNotFoundError:
            return AddressAllocator(self.pool)
        try:
            return AddressAllocator.from_record(json.loads(text), self.pool)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._start_afresh(exc)

    def _start_afresh(self, reason: Exception) -> AddressAllocator:
        """An unreadable file: writes are atomic, so only a crash of the whole host (which also
        takes every interface with it) or a hand edit can cause one. Starting empty is safe only if
        no interface of this node is left."""
        prefix = interface_prefix(self.table)
        leftovers = sorted(name for name in os.listdir(SYS_CLASS_NET) if name.startswith(prefix))
        if leftovers:
            raise errors.FailedPrecondition(
                f"{self._state_file} is unreadable ({reason}) while interfaces {', '.join(leftovers)} exist: "
                "remove them (ip link del) and their hutch-* network namespaces, then restart"
            )
        log.warning("starting with no sandbox addresses allocated: %s is unreadable (%s)", self._state_file, reason)
        return AddressAllocator(self.pool)

    def _save(self) -> None:
        # Atomic, not synced: the allocations only matter while the interfaces they describe exist,
        # and those do not survive the host crash that could lose an unsynced write.
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._ready().to_record()))
        tmp.replace(self._state_file)


class _GroupCommit:
    """Runs the nft scripts of concurrent callers as one transaction.

    A transaction that removes a set element takes 10-35 ms, and transactions run one at a time, so
    one per sandbox would queue a burst of kills behind each other and every create behind them
    (measured: 30 kills at once took 600 ms, against 100 ms batched). Callers that arrive while a
    transaction runs share the next one.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def run(self, script: str, what: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((script, what, future))
        async with self._lock:
            if not future.done():  # else an earlier caller's transaction carried it
                batch, self._pending = self._pending, []
                try:
                    await self._commit(batch)
                finally:
                    for _, _, other in batch:
                        if other is not future and not other.done():  # this caller was cancelled half-way
                            other.set_exception(errors.Internal("the firewall update was interrupted"))
        await future

    @staticmethod
    async def _commit(batch: list[tuple[str, str, asyncio.Future[None]]]) -> None:
        try:
            await _nft("".join(script for script, _, _ in batch), batch[0][1])
        except errors.HutchError as exc:
            if len(batch) == 1:
                batch[0][2].set_exception(exc)
                return
            # One caller's script spoilt the transaction: run each alone so only that one fails.
            for script, what, future in batch:
                try:
                    await _nft(script, what)
                    future.set_result(None)
                except errors.HutchError as own:
                    future.set_exception(own)
            return
        for _, _, future in batch:
            future.set_result(None)


async def _vanished(path: Path, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while path.exists():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(_RELEASE_POLL_S)
    return True


def _exists(network: SandboxNetwork) -> bool:
    return (SYS_CLASS_NET / network.host_interface).exists() or Path(network.netns_path).exists()


async def _all_of(*steps: Awaitable[None]) -> None:
    """Runs the steps concurrently, lets every one finish, then raises the first failure."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _run(argv: Sequence[str], script: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise errors.FailedPrecondition(f"`{argv[0]}` is not installed: apt-get install iproute2 nftables") from exc
    _, err = await proc.communicate(script.encode())
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def _checked(argv: Sequence[str], script: str, what: str) -> None:
    code, err = await _run(argv, script)
    if code == 0:
        return
    if "Operation not permitted" in err:
        raise errors.FailedPrecondition(f"could not {what}: {err} (the node-agent must run as root)")
    raise errors.Internal(f"could not {what}: {err or f'{argv[0]} exited with status {code}'}")


async def _ip(args: list[str], commands: list[str], what: str) -> None:
    await _checked(["ip", *args], "\n".join(c for c in commands if c) + "\n", what)


async def _nft(script: str, what: str) -> None:
    await _checked(["nft", "-f", "-"], script, what)
