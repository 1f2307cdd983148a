"""hutch-secrets-broker: run the secrets-broker (settings from HUTCH_* env), or print a new master key."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys

from hutch.core.lifecycle import configure_logging
from hutch_secrets_broker import app
from hutch_secrets_broker.crypto import KEY_BYTES
from hutch_secrets_broker.settings import SecretsBrokerSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="hutch-secrets-broker")
    commands = parser.add_subparsers(dest="command")
    new_key = commands.add_parser("new-master-key", help="print a random master key as ID:BASE64")
    new_key.add_argument("id", help="the key's id, e.g. k2")
    args = parser.parse_args()
    if args.command == "new-master-key":
        key = base64.b64encode(os.urandom(KEY_BYTES)).decode()
        sys.stdout.write(f"{args.id}:{key}\n")
        return
    settings = SecretsBrokerSettings()
    configure_logging(settings.log_level, "secrets-broker")
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
