"""What the egress-proxy costs a sandbox: added latency per HTTPS request and download throughput.

Every figure is printed beside a direct connection measured in the same run, and as a ratio to it:

- latency of small HTTPS requests (1 KiB answers), each on a new connection (one `curl` process per
  request, as a shell loop runs it) and on one kept-alive connection (one `curl` process fetching
  many URLs), per request as curl times it (`time_total`: name lookup, connect, TLS, answer), so
  the start of the process is not counted;
- throughput of a 256 MiB download.

The routes, all to the same server of the fake internet (`egress_lab`), which speaks HTTP/1.1 only:

- proxied, intercepted: from a sandbox to an allowed host; the proxy resolves the name for the
  sandbox, terminates TLS with its own CA, applies the policy and makes its own TLS connection.
  The proxy offers HTTP/2 to the client whatever the upstream speaks (it answers the client's TLS
  before it dials the upstream), and curl takes it; the `--http1.1` route is the same with the
  client held to HTTP/1.1, as Python's urllib and requests are;
- proxied, passthrough: from a sandbox to a passthrough host; the proxy reads the SNI and relays
  the bytes, TLS is end to end;
- direct: the baseline. Sandboxes cannot leave their namespace but through the proxy (that is the
  point of the node's nftables), and a way around it would mean rewriting the node's rules and
  turning on IP forwarding for the whole host. So the direct client runs in the host's network
  namespace, one veth hop from the fake internet as the proxy itself is, with the sandbox's own
  curl: the template's root filesystem, chrooted on a throwaway overlay, so the client binaries and
  libraries are the same. The name is pinned with `--resolve` (nothing resolves the fake names
  outside sandboxes), so the proxied figures also hold the name lookup through the proxy's DNS
  responder, shown apart in the breakdown per phase. The baseline also lacks the sandbox's own
  network path (its veth hop and, for gVisor, gVisor's network stack); what passthrough adds over
  direct bounds that from above.

Every client trusts exactly one CA certificate (`--cacert`: the proxy's, or the fake internet's),
so no figure pays for parsing a whole trust bundle (by default a sandbox's curl reads the system
bundle with the proxy's CA added, in every process). The routes are measured in interleaved rounds,
so a slow spell of this machine spreads over all of them. The proxy runs in this process (as
`egress_lab` starts it), so this process's CPU time while a proxied route runs is the proxy's, near
enough.

Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from figures import percentile, report, summary

from hutch.testing.egress_lab import EgressLab, LabSandbox, egress_lab
from hutch_node_agent import rootfs
from hutch_node_agent.sandbox_egress import CA_FILE

pytestmark = [
    pytest.mark.bench,
    # mitmproxy 11 uses pyOpenSSL calls that newer releases mark deprecated.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

MiB = 1024 * 1024
TEMPLATES = Path(os.environ.get("HUTCH_NODE__TEMPLATES_DIR", "/var/lib/hutch/templates"))
# Fake internets of other suites: 320-321 (tests/integration/egress), 330 (the local stack).
LAB_INDEX = {"container": 340, "gvisor": 341}
INTERCEPTED = "allowed.test"
PASSTHROUGH = "pinned.test"
SMALL = "/bytes/1024"
ROUNDS = 5
NEW_CONNECTIONS = 60  # per route and round
KEPT_ALIVE = 200  # per route and round
WARM_UP = 5
DOWNLOAD = 256 * MiB
DOWNLOADS = 5  # per route
DIRECT = "direct"
# One line per request: http code and version, new connections made, then curl's cumulative timings
# in seconds.
TIMING = (
    "%{http_code} %{http_version} %{num_connects} %{time_namelookup} %{time_connect} %{time_appconnect} "
    "%{time_starttransfer} %{time_total}\\n"
)


@dataclass(frozen=True)
class Timing:
    version: str
    connects: int
    lookup: float
    connect: float
    tls: float
    first_byte: float
    total: float


@dataclass(frozen=True)
class Route:
    name: str
    # Runs a shell command where the client lives; its output (stdout and stderr together).
    sh: Callable[[str, float], Awaitable[str]]
    host: str
    # What curl needs there: the CA to trust, the HTTP version, and for the direct route the address to use.
    curl: str


@dataclass
class Bench:
    isolation: str
    lab: EgressLab
    box: LabSandbox
    routes: list[Route]


def template_rootfs() -> Path:
    path = TEMPLATES / "base" / "rootfs"
    if not (path / "usr" / "bin" / "curl").exists():
        pytest.skip(f"needs the base template in {TEMPLATES} (make base-template)")
    return path


async def in_sandbox(box: LabSandbox, cmd: str, timeout: float) -> str:
    out, code = await box.sh(cmd, timeout=timeout)
    assert code == 0, out
    return out


async def in_chroot(root: Path, cmd: str, timeout: float) -> str:
    # Not subprocess.run: the proxy shares this event loop, and must not stall while another route runs.
    proc = await asyncio.create_subprocess_exec(
        shutil.which("chroot") or "/usr/sbin/chroot",
        str(root),
        "/bin/sh",
        "-c",
        cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def bench(request: pytest.FixtureRequest, server_tmp_root: Path) -> AsyncIterator[Bench]:
    isolation: str = request.param
    lower = template_rootfs()
    # Not below pytest's basetemp: sandbox users must traverse it, and pytest resets its mode.
    base = Path(tempfile.mkdtemp(prefix=f"egress-bench-{isolation}-", dir=server_tmp_root))
    root = base / "direct" / "rootfs"
    rootfs.mount_overlay([lower], base / "direct" / "upper", base / "direct" / "work", root)
    try:
        async with egress_lab(base / "lab", LAB_INDEX[isolation]) as lab:
            box = await lab.sandbox(isolation, allow=[INTERCEPTED, PASSTHROUGH], passthrough=[PASSTHROUGH])
            upstream_ca = lab.internet.ca_file.read_text()
            await in_sandbox(box, f"cat > /tmp/upstream-ca.pem <<'EOF'\n{upstream_ca}EOF", 30)
            (root / "tmp" / "upstream-ca.pem").write_text(upstream_ca)
            address = lab.internet.address(INTERCEPTED)

            async def sandbox_sh(cmd: str, timeout: float) -> str:
                return await in_sandbox(box, cmd, timeout)

            async def direct_sh(cmd: str, timeout: float) -> str:
                return await in_chroot(root, cmd, timeout)

            pinned = f"--resolve {INTERCEPTED}:443:{address}"
            routes = [
                Route(DIRECT, direct_sh, INTERCEPTED, f"--cacert /tmp/upstream-ca.pem {pinned}"),
                Route("proxied, intercepted", sandbox_sh, INTERCEPTED, f"--cacert {CA_FILE}"),
                Route("proxied, intercepted, --http1.1", sandbox_sh, INTERCEPTED, f"--http1.1 --cacert {CA_FILE}"),
                Route("proxied, passthrough", sandbox_sh, PASSTHROUGH, "--cacert /tmp/upstream-ca.pem"),
            ]
            yield Bench(isolation, lab, box, routes)
    finally:
        rootfs.unmount(root)
        shutil.rmtree(base, ignore_errors=True)


def parse(out: str, expected: int) -> list[Timing]:
    timings = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) != 8 or not fields[0].isdigit():
            continue
        assert fields[0] == "200", out
        lookup, connect, tls, first_byte, total = (float(f) for f in fields[3:])
        timings.append(Timing(fields[1], int(fields[2]), lookup, connect, tls, first_byte, total))
    assert len(timings) == expected, out
    return timings


async def new_connections(route: Route, n: int) -> list[Timing]:
    loop = f"for i in $(seq {n}); do curl -sS -o /dev/null -w '{TIMING}' {route.curl} https://{route.host}{SMALL}; done"
    return parse(await route.sh(loop, 60 + n), n)


async def kept_alive(route: Route, n: int) -> list[Timing]:
    # One process, n URLs: curl reuses the connection; the timings go to stderr, the bodies away.
    cmd = f"curl -sS -w '%{{stderr}}{TIMING}' {route.curl} 'https://{route.host}{SMALL}?i=[1-{n}]' 2>&1 >/dev/null"
    return parse(await route.sh(cmd, 60 + n), n)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def breakdown(name: str, timings: list[Timing]) -> str:
    """p50 of each phase: name lookup, TCP connect, TLS handshake, waiting for the first byte."""

    def p50(phase: Callable[[Timing], float]) -> str:
        return ms(percentile([phase(t) for t in timings], 50))

    return (
        f"  {name:<32} lookup {p50(lambda t: t.lookup)}  tcp {p50(lambda t: t.connect - t.lookup)}  "
        f"tls {p50(lambda t: t.tls - t.connect)}  first byte {p50(lambda t: t.first_byte - t.tls)}"
    )


def ratios(direct: list[float], other: list[float]) -> str:
    p50 = percentile(other, 50) / percentile(direct, 50)
    p99 = percentile(other, 99) / percentile(direct, 99)
    added = (percentile(other, 50) - percentile(direct, 50)) * 1000
    return f"  ratio to direct: p50 {p50:5.2f}x  p99 {p99:5.2f}x  (p50 {added:+.2f} ms per request)"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def versions(timings: list[Timing]) -> str:
    return "HTTP/" + ",".join(sorted({t.version for t in timings}))


@pytest.mark.timeout(900)
async def test_added_latency_per_https_request(bench: Bench) -> None:
    for route in bench.routes:
        await new_connections(route, WARM_UP)
        await kept_alive(route, WARM_UP)
    names = [r.name for r in bench.routes]
    fresh: dict[str, list[Timing]] = {name: [] for name in names}
    reused: dict[str, list[Timing]] = {name: [] for name in names}
    connects = dict.fromkeys(names, 0)
    # This process's CPU time per request while each route runs: the proxy's, for the proxied ones.
    fresh_cpu, reused_cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for _ in range(ROUNDS):
        for route in bench.routes:
            before = cpu_seconds()
            fresh[route.name] += await new_connections(route, NEW_CONNECTIONS)
            fresh_cpu[route.name] += cpu_seconds() - before
        for route in bench.routes:
            before = cpu_seconds()
            timings = await kept_alive(route, KEPT_ALIVE)
            reused_cpu[route.name] += cpu_seconds() - before
            connects[route.name] += sum(t.connects for t in timings)
            # The first request of each process opens the connection; the rest are what is measured.
            reused[route.name] += [t for t in timings if t.connects == 0]

    lines = [f"a new connection per request (one curl process each), {bench.isolation} sandbox:"]
    for name, timings in fresh.items():
        cpu = fresh_cpu[name] / (ROUNDS * NEW_CONNECTIONS) * 1000
        lines.append(summary(f"  {name}", [t.total for t in timings]) + f"  {versions(timings)}  cpu {cpu:.2f} ms")
        if name != DIRECT:
            lines.append(ratios([t.total for t in fresh[DIRECT]], [t.total for t in timings]))
    lines.append("  p50 per phase:")
    lines += [breakdown(name, timings) for name, timings in fresh.items()]
    lines.append(f"one kept-alive connection ({KEPT_ALIVE} requests per curl process), {bench.isolation} sandbox:")
    for name, timings in reused.items():
        cpu = reused_cpu[name] / (ROUNDS * KEPT_ALIVE) * 1000
        lines.append(
            summary(f"  {name}", [t.total for t in timings])
            + f"  {versions(timings)}  cpu {cpu:.2f} ms  connections {connects[name]}"
        )
        if name != DIRECT:
            lines.append(ratios([t.total for t in reused[DIRECT]], [t.total for t in timings]))
    lines.append("(cpu: this process's CPU time per request, the proxy's for the proxied routes)")
    report(f"egress-proxy: latency of a small HTTPS request ({SMALL}), {bench.isolation}", lines)


@pytest.mark.timeout(900)
async def test_throughput_of_a_large_download(bench: Bench) -> None:
    fields = "%{http_code} %{http_version} %{size_download} %{time_total}\\n"
    rates: dict[str, list[float]] = {r.name: [] for r in bench.routes}
    cpu: dict[str, float] = dict.fromkeys(rates, 0.0)
    seen: dict[str, set[str]] = {name: set() for name in rates}
    for _ in range(DOWNLOADS):
        for route in bench.routes:
            cmd = f"curl -sS -o /dev/null -w '{fields}' {route.curl} https://{route.host}/bytes/{DOWNLOAD}"
            before = cpu_seconds()
            out = await route.sh(cmd, 600)
            cpu[route.name] += cpu_seconds() - before
            code, version, size, seconds = out.split()[-4:]
            assert code == "200" and int(size) == DOWNLOAD, out
            seen[route.name].add(version)
            rates[route.name].append(DOWNLOAD / MiB / float(seconds))

    direct = percentile(rates[DIRECT], 50)
    lines = []
    for name, samples in rates.items():
        median, best = percentile(samples, 50), max(samples)
        ratio = "" if name == DIRECT else f"  ratio to direct {median / direct:5.2f}x"
        gib = DOWNLOADS * DOWNLOAD / 1024**3
        version = "HTTP/" + ",".join(sorted(seen[name]))
        lines.append(
            f"  {name:<32} {version:<8}  median {median:7.1f} MiB/s  best {best:7.1f} MiB/s{ratio}  "
            f"cpu {cpu[name] / gib:5.2f} s/GiB"
        )
    lines.append("(cpu: this process's CPU time per GiB downloaded, the proxy's for the proxied routes)")
    report(f"egress-proxy: a {DOWNLOAD // MiB} MiB HTTPS download, {bench.isolation} sandbox, n={DOWNLOADS}", lines)
