"""`python -m hutch.local`: the `hutch local` commands without the main CLI."""

from hutch.local.cli import main

main()
