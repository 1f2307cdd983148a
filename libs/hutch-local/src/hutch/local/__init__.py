"""`hutch local`: the whole platform on one machine.

- `hutch.local.servers`: real NATS, PostgreSQL and S3 servers from PyPI wheels, as child processes.
- `hutch.local.stack`: starts those and the platform services, records them in stack.json, stops them.
- `hutch.local.cli`: the `hutch local up|status|down` commands (`python -m hutch.local`).
"""
