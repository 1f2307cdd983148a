"""The `hutch` command-line tool: one module per command group, assembled in `main`."""
