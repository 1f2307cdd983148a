"""hutch-snapshot-store: run the snapshot-store (settings from HUTCH_* env).

hutch-snapshot-store                           serve
hutch-snapshot-store admin rotate-master-key   re-wrap every tenant data key under
                                               HUTCH_SNAPSHOT_STORE__MASTER_KEY, unwrapping with
                                               HUTCH_SNAPSHOT_STORE__PREVIOUS_MASTER_KEYS
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hutch.core import db, errors
from hutch.core.lifecycle import configure_logging
from hutch_snapshot_store import app
from hutch_snapshot_store.keys import rotate_master_key
from hutch_snapshot_store.settings import SnapshotStoreSettings


async def _rotate(settings: SnapshotStoreSettings) -> int:
    options = settings.snapshot_store
    async with db.pool(settings.postgres, app.SCHEMA) as pool:
        await db.migrate(pool, app.SCHEMA, db.load_migrations("hutch_snapshot_store", app.SCHEMA))
        return await rotate_master_key(pool, options.master_key_bytes(), options.previous_master_key_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hutch-snapshot-store", description="Hutch snapshot-store")
    commands = parser.add_subparsers(dest="command")
    admin = commands.add_parser("admin", help="operator tasks").add_subparsers(dest="task", required=True)
    admin.add_parser("rotate-master-key", help="re-wrap every tenant data key under the current master key")
    args = parser.parse_args(argv)

    settings = SnapshotStoreSettings()
    configure_logging(settings.log_level, "snapshot-store")
    if args.command == "admin":
        try:
            count = asyncio.run(_rotate(settings))
        except errors.HutchError as exc:
            sys.exit(f"rotate-master-key: {exc.message}")
        sys.stdout.write(f"re-wrapped {count} tenant data keys under the current master key\n")
        return
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
