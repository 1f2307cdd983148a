"""`hutch-gateway admin ...`: operator commands that talk to the gateway's database directly."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from hutch.core import db, errors, outbox
from hutch_gateway import quotas, store, tenants
from hutch_gateway.app import SCHEMA
from hutch_gateway.domain import DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_MB, DEFAULT_TEMPLATE, Limits, validate_create
from hutch_gateway.isolation import CLASSES, TRUSTED, UNTRUSTED, IsolationPolicy
from hutch_gateway.quotas import Quota
from hutch_gateway.settings import GatewaySettings

_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Members hold their CPU and memory while they wait: a pool is for absorbing bursts, not a fleet.
MAX_WARM_POOL_SIZE = 1000


async def _run(settings: GatewaySettings, args: argparse.Namespace) -> int:
    async with db.pool(settings.postgres, SCHEMA) as pool:
        await db.migrate(pool, SCHEMA, [*outbox.MIGRATIONS, *db.load_migrations("hutch_gateway", SCHEMA)])
        if args.command in ("create-tenant", "create-key"):
            print(await tenants.create_key(pool, args.name))  # noqa: T201
        elif args.command == "add-key":
            try:
                await tenants.add_existing_key(pool, args.name, sys.stdin.readline().strip())
            except errors.InvalidArgument as exc:
                print(exc.message, file=sys.stderr)  # noqa: T201
                return 1
        elif args.command == "set-policy":
            policy = IsolationPolicy(frozenset(args.allow), args.default_trust)
            if not await store.set_isolation_policy(pool, args.name, policy):
                print(f"no tenant named {args.name!r}", file=sys.stderr)  # noqa: T201
                return 1
        elif args.command == "set-quota":
            quota = Quota(args.sandboxes, round(args.cpu * 1000), args.memory_mb)
            if not await quotas.set_quota(pool, args.name, quota):
                print(f"no tenant named {args.name!r}", file=sys.stderr)  # noqa: T201
                return 1
        elif args.command == "set-warm-pool":
            region = args.region or settings.region
            cpu_millis = round(args.cpu * 1000)
            await store.set_warm_pool(
                pool, region, args.template, args.isolation, cpu_millis, args.memory_mb, args.size
            )
        elif args.command == "list-warm-pools":
            for row in await store.warm_pools(pool, args.region or settings.region):
                print(  # noqa: T201
                    f"{row['template']}\t{row['isolation']}\t{row['cpu_millis'] / 1000:g} vCPU\t"
                    f"{row['memory_mb']} MB\t{row['size']}"
                )
        elif args.command == "list-tenants":
            for tenant_id, name, keys in await store.list_tenants(pool):
                print(f"{tenant_id}\t{name}\t{keys} key(s)")  # noqa: T201
    return 0


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number from 0 to 2147483647")
    return value


def _vcpus(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 2_000_000:
        raise argparse.ArgumentTypeError(f"{text} is not a number of vCPUs from 0 to 2000000")
    return value


def _check_warm_pool(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        validate_create(
            template=args.template, name="", cpu_millis=round(args.cpu * 1000), memory_mb=args.memory_mb,
            metadata={}, envs={}, timeout_seconds=0, limits=Limits(2_000_000, 2**31 - 1),
        )  # fmt: skip
    except errors.HutchError as exc:
        parser.error(exc.message)
    if args.size > MAX_WARM_POOL_SIZE:
        parser.error(f"a warm pool holds at most {MAX_WARM_POOL_SIZE} sandboxes")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hutch-gateway admin", description="Manage tenants and API keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("create-tenant", "create a tenant and print a new API key for it"),
        ("create-key", "print a new API key for an existing (or new) tenant"),
    ):
        sub.add_parser(command, help=text).add_argument("name", help="tenant name: lowercase letters, digits, '-'")
    sub.add_parser(
        "add-key",
        help="make an API key another region created (read from standard input) work in this region too, "
        "creating the tenant here if needed",
    ).add_argument("name", help="tenant name")
    policy = sub.add_parser("set-policy", help="set which isolation classes a tenant may use")
    policy.add_argument("name", help="tenant name")
    policy.add_argument(
        "--allow", nargs="+", choices=CLASSES, default=list(CLASSES), help="isolation classes the tenant may use"
    )
    policy.add_argument(
        "--default-trust",
        choices=(TRUSTED, UNTRUSTED),
        default=TRUSTED,
        help="the trust assumed when a create does not say (untrusted: gVisor by default)",
    )
    quota = sub.add_parser(
        "set-quota", help="limit what a tenant may run at once (0: the gateway's default, HUTCH_GATEWAY__TENANT_MAX_*)"
    )
    quota.add_argument("name", help="tenant name")
    quota.add_argument("--sandboxes", type=_count, default=0, help="live sandboxes at once")
    quota.add_argument("--cpu", type=_vcpus, default=0.0, help="vCPUs their sandboxes hold together")
    quota.add_argument("--memory-mb", type=_count, default=0, help="memory their sandboxes hold together")
    sub.add_parser("list-tenants", help="list tenants and how many live keys each has")
    warm = sub.add_parser(
        "set-warm-pool",
        help="keep this many sandboxes of one kind started ahead of demand (0 removes the pool); "
        "creates asking for exactly that kind get one at once",
    )
    warm.add_argument("--template", default=DEFAULT_TEMPLATE, help="a built-in template")
    warm.add_argument("--isolation", choices=CLASSES, default="container", help="the isolation class")
    warm.add_argument("--cpu", type=_vcpus, default=DEFAULT_CPU_MILLIS / 1000, help="vCPUs of each member")
    warm.add_argument("--memory-mb", type=_count, default=DEFAULT_MEMORY_MB, help="memory of each member")
    warm.add_argument("--size", type=_count, required=True, help="members to keep warm")
    warm.add_argument("--region", default="", help="the region (default: HUTCH_REGION)")
    listed = sub.add_parser("list-warm-pools", help="list the warm pools of a region")
    listed.add_argument("--region", default="", help="the region (default: HUTCH_REGION)")
    args = parser.parse_args(argv)
    if args.command == "set-warm-pool":
        _check_warm_pool(parser, args)
    if getattr(args, "name", None) is not None and not _TENANT_NAME.match(args.name):
        parser.error(f"tenant name {args.name!r} must be 1-63 lowercase letters, digits or '-'")
    return asyncio.run(_run(GatewaySettings(), args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
