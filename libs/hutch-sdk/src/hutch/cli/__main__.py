"""Runs the CLI as `python -m hutch.cli`."""

from hutch.cli.main import main

main()
