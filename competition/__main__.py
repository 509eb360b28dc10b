"""`python -m competition` runs the CLI."""

from competition.cli import main

main()
