"""Sandboxes of both classes behind the node's egress-proxy, against a fake internet on this machine.

Everything is real but the secrets-broker (a stand-in serving fixed grants here; the broker itself
has its own tests and the end-to-end suite uses it): crun and runsc, the node's nftables, the proxy
(mitmproxy in transparent mode, its DNS responder and registry) and HTTP(S), DNS and raw TCP
servers in a network namespace of their own with addresses from 198.18.0.0/15.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.core.config import GrpcSettings
from hutch.core.grpc_runtime import Server, serve
from hutch.internal.v1 import secrets_resolver_pb2 as rpb
from hutch.internal.v1 import secrets_resolver_pb2_grpc
from hutch.testing.egress_lab import EgressLab, LabSandbox, egress_lab, free_port
from hutch.testing.eventually import eventually

pytestmark = [
    pytest.mark.integration,
    # mitmproxy 11 uses pyOpenSSL calls that newer releases mark deprecated.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

RESOLVER_TOKEN = "egress-lab-resolver-token"
TOKEN = "ghp_lab-secret-0123456789abcdef"
PLACEHOLDER_VALUE = "pl4ceholder-value-9876543210"
CURL = "curl -sS -m 20"


class FakeResolver(secrets_resolver_pb2_grpc.SecretsResolverServicer):
    """Grants for sandboxes named `agent` of tenant-a only; counts resolutions."""

    def __init__(self) -> None:
        self.resolved: list[tuple[str, str, str]] = []

    async def GrantsFor(self, request: rpb.GrantsForRequest, context: object) -> rpb.GrantsForResponse:
        if request.sandbox.tenant_id != "tenant-a" or request.sandbox.name != "agent":
            return rpb.GrantsForResponse()
        return rpb.GrantsForResponse(
            grants=[
                rpb.ResolverGrant(secret="TOKEN", hosts=["allowed.test"], header="Authorization: Bearer {value}"),
                rpb.ResolverGrant(secret="API_KEY", hosts=["api.example.test"], placeholder=True),
            ]
        )

    async def Resolve(self, request: rpb.ResolveSecretRequest, context: object) -> rpb.ResolvedSecret:
        self.resolved.append((request.sandbox.sandbox_id, request.secret, request.host))
        value = TOKEN if request.secret == "TOKEN" else PLACEHOLDER_VALUE
        return rpb.ResolvedSecret(value=value.encode(), version=1)


@dataclass
class World:
    lab: EgressLab
    resolver: FakeResolver
    resolver_server: Server
    resolver_port: int
    box: LabSandbox
    agent: LabSandbox


async def serve_resolver(resolver: FakeResolver, port: int) -> Server:
    return await serve(
        GrpcSettings(port=port, shutdown_grace_s=0),
        [
            (
                secrets_resolver_pb2_grpc.add_SecretsResolverServicer_to_server,
                resolver,
                "hutch.internal.v1.SecretsResolver",
            )
        ],
        internal_token=RESOLVER_TOKEN,
    )


@pytest.fixture(scope="module", params=["container", "gvisor"])
async def world(request: pytest.FixtureRequest, server_tmp_root: Path) -> AsyncIterator[World]:
    resolver = FakeResolver()
    port = free_port()
    world: World | None = None
    server = await serve_resolver(resolver, port)
    index = 320 + (1 if request.param == "gvisor" else 0)
    # Not below pytest's basetemp: sandbox users must traverse it, and pytest resets its mode.
    base = Path(tempfile.mkdtemp(prefix=f"egress-{request.param}-", dir=server_tmp_root))
    try:
        async with egress_lab(base, index, resolver_address=f"127.0.0.1:{port}", resolver_token=RESOLVER_TOKEN) as lab:
            box = await lab.sandbox(
                request.param, allow=["allowed.test", "*.allowed.test", "pinned.test"], passthrough=["pinned.test"]
            )
            agent = await lab.sandbox(
                request.param,
                allow=["allowed.test", "api.example.test", "other.test"],
                name="agent",
                envs={"API_KEY": "hutch-secret://API_KEY"},
            )
            world = World(lab, resolver, server, port, box, agent)
            yield world
    finally:
        await (world.resolver_server if world is not None else server).stop()


def forget_answers(world: World) -> None:
    """As if the proxy's cached DNS answers had run out (their TTL is a second here)."""
    assert world.lab.proxy is not None
    world.lab.proxy.resolver.forget()


async def status_of(box: LabSandbox, url: str, extra: str = "") -> str:
    out, _ = await box.sh(f"{CURL} -o /dev/null -w '%{{http_code}}' {extra} {url}")
    return out.strip()[-3:]


async def test_an_allowed_host_works_over_http_and_https_with_curl(world: World) -> None:
    for scheme in ("http", "https"):
        out, code = await world.box.sh(f"{CURL} {scheme}://allowed.test/echo")
        assert code == 0, out
        seen = json.loads(out)
        assert seen["address"] == world.lab.internet.address("allowed.test")
        assert seen["tls"] is (scheme == "https")


async def test_python_urllib_and_requests_trust_the_proxy_without_flags(world: World) -> None:
    script = (
        "import urllib.request, json\n"
        "print(json.load(urllib.request.urlopen('https://allowed.test/echo'))['path'])\n"
        "from pip._vendor import requests\n"
        "print(requests.get('https://sub.allowed.test/echo?x=1', timeout=20).json()['path'])\n"
    )
    out, code = await world.box.sh(f'python3 -c "{script}"')
    assert code == 0, out
    assert out.split() == ["/echo", "/echo?x=1"]


async def test_a_denied_host_gets_a_403_that_names_the_policy(world: World) -> None:
    before = len(world.lab.internet.requests("denied.test"))
    for scheme in ("http", "https"):
        out, code = await world.box.sh(f"{CURL} -i {scheme}://denied.test/echo")
        assert code == 0, out
        assert " 403 " in out.splitlines()[0]
        assert "denied.test" in out and "network policy" in out
    assert len(world.lab.internet.requests("denied.test")) == before


async def test_connecting_to_an_address_directly_is_refused(world: World) -> None:
    address = world.lab.internet.address("allowed.test")
    out, _ = await world.box.sh(f"{CURL} -i http://{address}/echo")
    assert " 403 " in out.splitlines()[0]
    assert "addresses need a CIDR entry" in out


async def test_a_forged_host_header_never_reaches_the_other_host(world: World) -> None:
    denied = world.lab.internet.address("denied.test")
    before = len(world.lab.internet.requests("denied.test"))
    out, _ = await world.box.sh(f"{CURL} -i --resolve allowed.test:80:{denied} http://allowed.test/echo")
    assert " 403 " in out.splitlines()[0]
    assert "forged" in out
    out, _ = await world.box.sh(f"{CURL} -i -H 'Host: allowed.test' http://{denied}/echo")
    assert " 403 " in out.splitlines()[0]
    # TLS for one name, a Host header for another.
    out, _ = await world.box.sh(f"{CURL} -i -H 'Host: denied.test' https://allowed.test/echo")
    assert " 403 " in out.splitlines()[0]
    assert len(world.lab.internet.requests("denied.test")) == before


async def test_a_non_http_protocol_is_reset(world: World) -> None:
    probe = (
        "import socket\n"
        "s = socket.create_connection(('allowed.test', 7000), timeout=15)\n"
        "s.sendall(b'HELLO raw\\\\n')\n"
        "try:\n print(repr(s.recv(100)))\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    out, _ = await world.box.sh(f'python3 -c "{probe}"')
    assert out.strip() in ("ConnectionResetError", "b''"), out
    assert "HUTCH-RAW" not in out


async def test_tunnelling_with_connect_to_a_denied_host_is_refused(world: World) -> None:
    before = len(world.lab.internet.requests("denied.test"))
    out, _ = await world.box.sh(f"{CURL} -p -x http://allowed.test:80 https://denied.test/echo; echo exit=$?")
    assert "exit=0" not in out
    assert len(world.lab.internet.requests("denied.test")) == before


async def test_a_name_that_resolves_to_internal_addresses_reaches_nothing(world: World) -> None:
    net = world.lab.internet
    records = net.default_records()
    records["sub.allowed.test"] = ["127.0.0.1"]
    net.set_dns(records)
    forget_answers(world)
    try:
        out, _ = await world.box.sh(f"{CURL} -i http://sub.allowed.test/echo")
        assert " 403 " in out.splitlines()[0], out
        assert "may never reach" in out
    finally:
        net.set_dns(net.default_records())


async def test_dns_rebinding_after_a_good_answer_is_refused(world: World) -> None:
    net = world.lab.internet
    name = f"r{uuid.uuid4().hex[:6]}.allowed.test"
    records = net.default_records()
    records[name] = [net.address("allowed.test")]
    net.set_dns(records)
    try:
        assert await status_of(world.box, f"http://{name}/echo") == "200"
        records[name] = ["169.254.169.254"]
        net.set_dns(records)
        forget_answers(world)

        async def refused() -> bool:
            return await status_of(world.box, f"http://{name}/echo") == "403"

        await eventually(refused, timeout=30, interval=0.5)
    finally:
        net.set_dns(net.default_records())


async def test_a_policy_change_applies_to_new_connections(world: World) -> None:
    assert await status_of(world.box, "http://other.test/echo") == "403"
    await world.box.update(allow=["allowed.test", "*.allowed.test", "pinned.test", "other.test"])

    async def allowed() -> bool:
        return await status_of(world.box, "http://other.test/echo") == "200"

    await eventually(allowed, timeout=5, interval=0.1)
    await world.box.update(allow=["allowed.test", "*.allowed.test", "pinned.test"], passthrough=["pinned.test"])
    await eventually(lambda: status_of(world.box, "http://other.test/echo"), timeout=5)
    assert await status_of(world.box, "http://other.test/echo") == "403"


async def test_a_passthrough_host_is_not_intercepted(world: World) -> None:
    # The proxy's CA is not involved: only the fake internet's own CA verifies this connection.
    ca = world.lab.internet.ca_file.read_text()
    await world.box.sh(f"cat > /tmp/upstream-ca.pem <<'EOF'\n{ca}EOF")
    out, code = await world.box.sh(f"{CURL} --cacert /tmp/upstream-ca.pem https://pinned.test/echo")
    assert code == 0, out
    assert json.loads(out)["address"] == world.lab.internet.address("pinned.test")
    out, code = await world.box.sh(f"{CURL} --cacert /tmp/upstream-ca.pem https://allowed.test/echo")
    assert code != 0  # intercepted: the proxy's certificate is not the upstream CA's


async def test_the_upstream_receives_the_credential_the_sandbox_never_sees(world: World) -> None:
    out, code = await world.agent.sh(f"{CURL} -i https://allowed.test/echo")
    assert code == 0, out
    received = world.lab.internet.requests("allowed.test")[-1]
    assert ["Authorization", f"Bearer {TOKEN}"] in received["headers"] or [
        "authorization",
        f"Bearer {TOKEN}",
    ] in received["headers"]
    assert TOKEN not in out  # the echoed body and the echoed header are masked
    assert "*" * len(TOKEN) in out
    hunt = (
        f"grep -rIl {TOKEN} /proc/*/environ /proc/*/cmdline /etc /root /tmp /.hutch 2>/dev/null; env | grep -c {TOKEN}"
    )
    out, _ = await world.agent.sh(hunt)
    assert TOKEN not in out and out.strip().splitlines()[-1] == "0", out


async def test_a_placeholder_is_swapped_on_the_wire_for_its_granted_host_only(world: World) -> None:
    out, code = await world.agent.sh(f'{CURL} -H "X-Api-Key: $API_KEY" "https://api.example.test/echo?key=$API_KEY"')
    assert code == 0, out
    received = world.lab.internet.requests("api.example.test")[-1]
    assert [k.lower() for k, v in received["headers"] if v == PLACEHOLDER_VALUE] == ["x-api-key"]
    assert received["path"] == f"/echo?key={PLACEHOLDER_VALUE}"
    assert PLACEHOLDER_VALUE not in out
    before = len(world.lab.internet.requests("other.test"))
    out, _ = await world.agent.sh(f'{CURL} -i -H "X-Api-Key: $API_KEY" http://other.test/echo')
    assert " 403 " in out.splitlines()[0]
    assert "placeholder for secret 'API_KEY'" in out
    assert len(world.lab.internet.requests("other.test")) == before


async def test_one_sandboxs_grant_never_applies_to_another(world: World) -> None:
    out, code = await world.box.sh(f"{CURL} https://allowed.test/echo")
    assert code == 0
    assert all(k.lower() != "authorization" for k, _ in json.loads(out)["headers"])


async def test_with_the_secrets_broker_down_injection_fails_closed(world: World) -> None:
    lab = world.lab
    assert lab.proxy is not None
    lab.proxy.credentials.forget(world.agent.id)
    await world.resolver_server.stop()
    try:
        before = len(lab.internet.requests("allowed.test"))
        out, _ = await world.agent.sh(f"{CURL} -i https://allowed.test/echo")
        assert " 503 " in out.splitlines()[0], out
        assert "secrets-broker" in out
        assert len(lab.internet.requests("allowed.test")) == before
    finally:
        world.resolver_server = await serve_resolver(world.resolver, world.resolver_port)

    async def injected_again() -> bool:
        out, code = await world.agent.sh(f"{CURL} -o /dev/null -w '%{{http_code}}' https://allowed.test/echo")
        received = lab.internet.requests("allowed.test")[-1]
        return out.strip().endswith("200") and ["authorization", f"Bearer {TOKEN}"] in [
            [k.lower(), v] for k, v in received["headers"]
        ]

    # The broker back: values are injected again (once the proxy's channel has reconnected).
    await eventually(injected_again, timeout=30, interval=0.5)


async def test_bytes_are_counted_per_sandbox_and_destination(world: World) -> None:
    lab = world.lab
    lab.events.clear()
    out, code = await world.box.sh(f"{CURL} -o /dev/null -w '%{{size_download}}' https://allowed.test/bytes/300000")
    assert code == 0 and out.strip() == "300000"
    await world.box.sh(f"{CURL} -o /dev/null http://denied.test/")
    await lab.flush()
    traffic = [e.payload for s, e in lab.events if s.endswith("egress.traffic") and e.sandbox == world.box.id]
    by_destination = {c.destination: c for t in traffic for c in t.destinations}
    assert by_destination["allowed.test:443"].bytes_in >= 300000
    assert by_destination["allowed.test:443"].requests >= 1
    assert by_destination["denied.test:80"].refused >= 1
    usage = [e.payload for s, e in lab.events if s.endswith("usage.egress") and e.sandbox == world.box.id]
    assert usage and usage[0].egress_bytes > 0 and usage[0].tenant_id == "tenant-a"
    audits = [e.payload for s, e in lab.events if s.endswith("egress.audit")]
    assert any(a.action == "refused" and a.destination == "denied.test:80" for a in audits)


async def test_while_the_proxy_is_down_sandboxes_have_no_egress(world: World) -> None:
    lab = world.lab
    await lab.stop_proxy()
    out, _ = await world.box.sh(f"{CURL} -m 5 http://allowed.test/echo; echo exit=$?")
    assert "exit=0" not in out
    await lab.start_proxy()

    async def back() -> bool:
        return await status_of(world.box, "http://allowed.test/echo") == "200"

    await eventually(back, timeout=20, interval=0.3)
