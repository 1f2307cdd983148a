"""Test support for Hutch: real servers and the whole stack as pytest fixtures (see `plugin`).

The plugin is registered through the `pytest11` entry point, so installing this package is enough;
its fixtures are `nats_server`, `nats_url`, `fresh_nats`, `postgres_server`, `postgres_dsn`,
`s3_server`, `s3_bucket` and `local_stack`.
"""

from hutch.testing.eventually import assert_eventually, eventually, eventually_sync

__all__ = ["assert_eventually", "eventually", "eventually_sync"]
